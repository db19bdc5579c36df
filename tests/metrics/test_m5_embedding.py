"""M5's evaluator embedding (``m5.embedding: patch_mean|cls``): per-feature scores equal the authors'
``visaebench.MonosemanticityScore`` on the same codes and images, for both embeddings; the patch mean is
the final-LayerNorm'd patch tokens of the chosen block, averaged (visaebench: get_intermediate_layers)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from visae.backbones.offline_dinov2 import Dinov2Backbone
from visae.metrics.embeddings import BackboneEmbedder
from visae.metrics.m5_monosemanticity import M5Config, StreamingTopN, compute_m5

N_IMAGES, N_PATCHES, D_IN, N_FEATURES = 72, 9, 8, 48


@pytest.fixture(scope="module")
def tiny_dinov2() -> Dinov2Backbone:
    """A tiny random 12-block Dinov2Model (block 11 is its last, as in ViT-B) behind visae's wrapper."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, mlp_ratio=2,
                          patch_size=14, image_size=42, layerscale_value=1.0)
    return Dinov2Backbone(Dinov2Model(config), name="tiny", weights_id="t", device=torch.device("cpu"),
                          image_size=56)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(4, 56, 56, 3))
    # four visual "themes" with noise, so top images are similar to a varying degree
    return [Image.fromarray(np.clip(base[i % 4] + rng.normal(0, 40, size=(56, 56, 3)), 0, 255)
                            .astype(np.uint8)) for i in range(N_IMAGES)]


class AuthorsEvaluator:
    """visaebench's BackboneInterface around the same tiny model: ``get_intermediate_layers(n=[layer],
    norm=True)`` patch tokens (the authors' DINOv2 wrapper), or the CLS token as a one-token sequence."""

    def __init__(self, bb: Dinov2Backbone, kind: str) -> None:
        self.bb, self.kind = bb, kind

    @torch.no_grad()
    def extract_activations(self, pil_images: list[Image.Image], *, layer: int = 11) -> torch.Tensor:
        x = torch.stack([self.bb.transform(im) for im in pil_images])
        out = self.bb.model(pixel_values=x, output_hidden_states=True)
        if self.kind == "cls":
            return out.pooler_output[:, None, :]
        return self.bb.model.layernorm(out.hidden_states[layer + 1])[:, 1:, :]


class ReluSAE:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(D_IN, N_FEATURES, generator=g)
        self.b = torch.full((N_FEATURES,), -2.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ self.w + self.b)


@pytest.mark.parametrize("embedding", ["patch_mean", "cls"])
def test_per_feature_scores_equal_visaebench(tiny_dinov2: Dinov2Backbone, embedding: str) -> None:
    from visaebench.metrics.concept_detection.monosemanticity import MonosemanticityScore

    acts = torch.randn(N_IMAGES, N_PATCHES, D_IN, generator=torch.Generator().manual_seed(2))
    sae, imgs = ReluSAE(), images()
    theirs = MonosemanticityScore(top_k_images=16, max_features=10_000).compute(
        sae, acts, device="cpu", images=imgs, evaluator_backbone=AuthorsEvaluator(tiny_dinov2, embedding))
    their_ms = np.asarray(theirs.metadata["ms_distribution"])

    pooled_nf = sae.encode(acts.reshape(-1, D_IN)).reshape(N_IMAGES, N_PATCHES, -1).amax(dim=1)
    tracker = StreamingTopN(16)
    tracker.update(pooled_nf[:30], np.arange(30))
    tracker.update(pooled_nf[30:], np.arange(30, N_IMAGES))
    source: Any = SimpleNamespace(load=lambda i: imgs[i])
    embedder = BackboneEmbedder(tiny_dinov2, source, np.arange(N_IMAGES), batch_size=16,
                                embedding=embedding, layer=11)
    labels = np.arange(N_IMAGES) % 4
    result, table = compute_m5(*tracker.result(), labels, embedder, M5Config(embedding=embedding))  # type: ignore[arg-type]
    ours = table["ms"].to_numpy()
    ours = ours[np.isfinite(ours)]
    assert len(ours) == len(their_ms) > 20
    np.testing.assert_allclose(ours, their_ms, rtol=0, atol=5e-7)
    assert result.raw == pytest.approx(theirs.value, abs=5e-7)
    kind = embedder.embedding_kind
    assert ("block-11 patch tokens after the final norm" in kind) == (embedding == "patch_mean")


def test_patch_mean_is_normed_last_hidden_state_mean(tiny_dinov2: Dinov2Backbone) -> None:
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        last = tiny_dinov2.model(pixel_values=x).last_hidden_state  # HF applies the final LayerNorm
    torch.testing.assert_close(tiny_dinov2.patch_mean_embed(x, 11), last[:, 1:].mean(dim=1), rtol=0,
                               atol=1e-6)
    # a layer past the last block is the last block
    torch.testing.assert_close(tiny_dinov2.patch_mean_embed(x, 40), last[:, 1:].mean(dim=1), rtol=0,
                               atol=1e-6)
    assert not torch.allclose(tiny_dinov2.patch_mean_embed(x, 5), last[:, 1:].mean(dim=1))


def test_default_is_the_authors_convention() -> None:
    assert M5Config().embedding == "patch_mean" and M5Config().embedding_layer == 11
    assert M5Config().tie_rule == "earliest"
    with pytest.raises(ValueError, match="embedding"):
        M5Config(embedding="mean")  # type: ignore[arg-type]
