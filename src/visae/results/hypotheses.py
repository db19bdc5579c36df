"""What a pre-registered hypothesis says (§4.5): the spec a study configures and the analysis tests.

The spec lives at the bottom of the pipeline so that the study configuration can name hypotheses without
importing the analysis; :func:`visae.analysis.hypotheses.evaluate_hypotheses` tests them.
"""

from __future__ import annotations

from pydantic import Field

from visae.config import FrozenConfig


class Hypothesis(FrozenConfig):
    """One pre-registered cross-backbone hypothesis."""

    id: str = Field(description="short name, e.g. H1")
    metric: str = Field(description="SAE-internal metric (tidy-table name), averaged over configurations")
    task: str = Field(description="downstream metric name, e.g. task:segmentation_miou:raw")
    threshold: float = Field(description="confirmation threshold on Spearman ρ, fixed in advance "
                                         "(paper §4.5)")
    alpha: float = Field(0.05, description="significance level for a 'confirmed' verdict")
    description: str = Field("", description="the hypothesis in words")


PREREGISTERED: tuple[Hypothesis, ...] = (
    Hypothesis(id="H1", metric="m1", task="task:segmentation_miou:raw", threshold=0.7,
               description="M1 spatial coherence → ADE20K segmentation mIoU (paper §4.5)"),
    Hypothesis(id="H2", metric="m5", task="task:cub_acc:raw", threshold=0.6,
               description="normalized M5 monosemanticity → CUB-200 fine-grained accuracy (paper §4.5)"),
    Hypothesis(id="H3", metric="m3", task="task:retrieval_r1:raw", threshold=0.6,
               description="M3 preservation → image-image retrieval R@1 on held-out ImageNet (paper §4.5)"),
    Hypothesis(id="H4", metric="m4", task="task:inat_sparse_auc128:codes", threshold=0.7,
               description="M4 ImageNet sparse probing → iNaturalist sparse probing AUC at k = 128 "
                           "(paper §4.5)"),
)
