"""Image-image retrieval (H3, App. P): cosine nearest neighbours on max-pooled features, Recall@k.

Protocol. Images are the held-out evaluation set (an ImageNet validation subset in the paper). Each
image's feature is its max-pool over patches (as in the metrics), L2-normalized; an image with an all-zero
feature (possible for codes) has similarity 0 to everything. A query scores a hit at k when at least one of
its k most cosine-similar gallery images has the query's class; R@k is the fraction of queries with a hit.

* ``leave_one_out`` (default): every image is a query against all the others (the query itself is removed
  from its own gallery);
* ``split``: a stratified ``query_fraction`` of the images (seed 42) are the queries, the rest the gallery.

Ties in similarity are broken by gallery order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, field_validator

from visae.cache.reader import ActivationCache
from visae.cache.whitening import refuse_probe_whiten
from visae.errors import ConfigError
from visae.sae.base import SAE
from visae.tasks.base import TaskConfig, TaskResult, check_features, headline, pooled_features
from visae.tasks.registry import TaskSpec


class RetrievalConfig(TaskConfig):
    """Settings of the retrieval task."""

    protocol: Literal["leave_one_out", "split"] = Field(
        "leave_one_out",
        description="leave_one_out: every image queries all others; split: stratified queries vs gallery")
    query_fraction: float = Field(0.2, gt=0, lt=1,
                                  description="split protocol: fraction of images used as queries")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10],
                          description="recall cut-offs (paper App. P: R@1, R@5, R@10)")
    query_chunk: int = Field(1024, ge=1,
                             description="queries scored at once (memory: chunk × gallery similarities)")
    whiten: str = Field("none", description="not applicable: retrieval fits no probe (only 'none' is "
                                            "accepted; see m3.whiten)")

    @field_validator("whiten")
    @classmethod
    def _no_whiten(cls, v: str) -> str:
        return refuse_probe_whiten("retrieval", v, "retrieval ranks by cosine similarity and fits no probe")


def _normalize_rows(x: np.ndarray | sp.csr_matrix) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ x)
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _as_torch(x: np.ndarray | sp.csr_matrix, device: torch.device) -> torch.Tensor:
    if sp.issparse(x):
        coo = sp.coo_matrix(x)
        idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
        return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape,
                                       check_invariants=False).coalesce().to(device)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


@torch.no_grad()
def recall_at_k(features: np.ndarray | sp.csr_matrix, labels_n: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                query_idx: np.ndarray | None = None, gallery_idx: np.ndarray | None = None,
                device: torch.device | None = None, chunk: int = 1024) -> dict[int, float]:
    """R@k of cosine retrieval. Without indices: leave-one-out over all rows; else queries vs gallery rows
    (a row in both sets never retrieves itself)."""
    device = device or torch.device("cpu")
    n = features.shape[0]
    labels_n = np.asarray(labels_n)
    q_idx = np.arange(n) if query_idx is None else np.asarray(query_idx)
    g_idx = np.arange(n) if gallery_idx is None else np.asarray(gallery_idx)
    feats = _normalize_rows(features)
    gallery = _as_torch(feats[g_idx], device)
    g_labels = torch.as_tensor(labels_n[g_idx], device=device)
    g_pos = torch.as_tensor(g_idx, device=device)
    k_max = min(max(ks), len(g_idx) - (1 if query_idx is None else 0))
    if k_max < 1:
        raise ConfigError(f"retrieval: the gallery holds {len(g_idx)} image(s); too few to retrieve from")
    hits = torch.zeros(len(q_idx), k_max, dtype=torch.bool, device=device)
    for s in range(0, len(q_idx), chunk):
        qi = q_idx[s:s + chunk]
        q = feats[qi]
        q_dense = sp.csr_matrix(q).toarray() if sp.issparse(q) else q
        q_t = torch.as_tensor(np.asarray(q_dense, dtype=np.float32), device=device)
        sims = torch.sparse.mm(gallery, q_t.T).T if gallery.is_sparse else q_t @ gallery.T  # [c, n_gallery]
        same = torch.as_tensor(qi, device=device)[:, None] == g_pos[None, :]
        sims = sims.masked_fill(same, float("-inf"))
        top = sims.topk(k_max, dim=1).indices
        hits[s:s + len(qi)] = g_labels[top] == torch.as_tensor(labels_n[qi], device=device)[:, None]
    first_hit = hits.cumsum(dim=1) > 0
    return {k: float(first_hit[:, min(k, k_max) - 1].float().mean()) for k in ks}


def run_retrieval(sae: SAE | None, cache: ActivationCache, config: RetrievalConfig,
                  device: torch.device) -> TaskResult:
    """R@k on raw / codes / recon pooled features of one evaluation cache."""
    kinds = check_features(config.features, sae)
    labels = cache.labels
    feats = pooled_features(cache, sae, kinds, device, config.group_size)
    query_idx: np.ndarray | None = None
    gallery_idx: np.ndarray | None = None
    if config.protocol == "split":
        from visae.metrics.probes import stratified_split

        gallery_idx, query_idx = stratified_split(labels, config.query_fraction, config.seed)
        protocol = (f"stratified split (seed {config.seed}): {len(query_idx)} queries against a gallery of "
                    f"{len(gallery_idx)}")
    else:
        protocol = f"leave-one-out: each of {len(labels)} images queries the other {len(labels) - 1}"
    protocol += "; cosine on max-pooled features; hit = a top-k neighbour shares the query's class"
    scores: dict[str, float | None] = {}
    for kind in kinds:
        rec = recall_at_k(feats[kind], labels, config.ks, query_idx, gallery_idx, device, config.query_chunk)
        for k, v in rec.items():
            scores[f"task:retrieval_r{k}:{kind}"] = v
    n_eval = len(labels) if query_idx is None else len(query_idx)
    return TaskResult(metric="task:retrieval", task="retrieval", value=headline(scores, "retrieval_r1"),
                      higher_is_better=True, scores=scores, protocol=protocol, n_eval=n_eval)


RETRIEVAL = TaskSpec(RetrievalConfig, run_retrieval)
