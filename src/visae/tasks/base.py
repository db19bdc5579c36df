"""What every downstream task shares: its result type, the feature pass over a cache, and result writing.

Feature kinds (paper App. O): ``raw`` — backbone activations in the SAE's normalized input space (the
training cache's per-dimension mean and scalar std; with no SAE, the task cache's own statistics);
``codes`` — SAE inference codes; ``recon`` — SAE reconstructions (same space as ``raw``). Every SAE of one
backbone and layer is trained on the same cache, so ``raw`` is the same whichever of them normalizes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from visae.cache.reader import ActivationCache
from visae.config import FrozenConfig
from visae.errors import ConfigError
from visae.metrics.base import MetricResult
from visae.metrics.encode import auto_group_size, encode_stream
from visae.results.record import write_result_record
from visae.results.schema import FEATURE_KINDS, task_metric
from visae.sae.base import SAE


class TaskConfig(FrozenConfig):
    """Settings every task shares."""

    features: list[str] = Field(
        default_factory=lambda: ["raw", "codes"],
        description="feature kinds to evaluate: raw, codes, recon (codes/recon need an SAE; paper App. O "
                    "uses raw and codes)")
    group_size: int = Field(64, ge=1,
                            description="images encoded per group (memory bound, as in the metrics)")
    seed: int = Field(42, description="seed of every split and subsample (paper Table 2: 42)")


class TaskResult(MetricResult):
    """A task's numbers: ``scores`` maps tidy metric names (``task:<task>:<features>``) to values."""

    task: str = Field(description="task kind: retrieval, segmentation, classification")
    scores: dict[str, float | None] = Field(description="every number as a tidy-table metric name → value")
    protocol: str = Field(description="what was computed, on what split, in words")
    n_train: int = Field(0, description="training items (images or patches) of the task head, 0 if none")
    n_eval: int = Field(description="evaluation items (queries, images or patches)")

    def rows(self, sae_id: str = "") -> list[dict[str, Any]]:
        """Rows ``{metric, features, value, sae_id}`` (metric without the ``task:`` prefix and feature
        suffix)."""
        from visae.results.schema import parse_task_metric

        out = []
        for name, value in self.scores.items():
            parsed = parse_task_metric(name)
            if parsed is not None:
                out.append({"metric": parsed.task, "features": parsed.features, "value": value,
                            "sae_id": sae_id})
        return out


def check_features(features: Sequence[str], sae: SAE | None) -> list[str]:
    """Validate the requested feature kinds; codes and recon need an SAE."""
    bad = [f for f in features if f not in FEATURE_KINDS]
    if bad:
        raise ConfigError(f"features: unknown kind(s) {bad}; use {', '.join(FEATURE_KINDS)}")
    if sae is None and any(f != "raw" for f in features):
        raise ConfigError("features: codes and recon need an SAE; pass one or ask for features=['raw']")
    if not features:
        raise ConfigError("features: empty; ask for at least one of raw, codes, recon")
    return list(dict.fromkeys(features))


@dataclass
class FeatureGroup:
    """One group of images with the requested patch-level features."""

    index_n: np.ndarray
    """Positions of these images in the cache."""
    feats: dict[str, torch.Tensor]
    """Feature kind → ``[n, P, ·]`` float32 on the task's device."""


@torch.no_grad()
def train_and_held_out(caches: Mapping[str, ActivationCache], task: str,
                       held_out: tuple[str, str]) -> tuple[ActivationCache, ActivationCache]:
    """The ``train`` cache of ``caches`` and the held-out one (key ``held_out[0]``, else ``held_out[1]``);
    ConfigError naming the keys a ``task`` needs otherwise."""
    key = held_out[0] if held_out[0] in caches else held_out[1]
    if "train" not in caches or key not in caches:
        raise ConfigError(f"{task} caches: need keys 'train' and '{held_out[0]}' (or '{held_out[1]}'), got "
                          f"{sorted(caches)}")
    return caches["train"], caches[key]


def iter_features(cache: ActivationCache, sae: SAE | None, kinds: Sequence[str], device: torch.device,
                  group_size: int = 64) -> Iterator[FeatureGroup]:
    """Every image group of ``cache`` with the requested feature kinds (one encoding pass)."""
    if sae is None or list(kinds) == ["raw"]:  # raw only: no encoding needed
        n_group = auto_group_size(cache.layout.n_patches, cache.d_model, group_size)
        for index_n, acts_npd in cache.iter_images(group_size=n_group, normalize=sae is None):
            acts = acts_npd.to(device=device, dtype=torch.float32)
            if sae is not None:
                acts = sae.to(device).normalize(acts)
            yield FeatureGroup(index_n, {"raw": acts})
        return
    for batch in encode_stream(sae, cache, group_size=group_size, device=device):
        every = {"raw": batch.acts_npd, "codes": batch.codes_npf, "recon": batch.recon_npd}
        yield FeatureGroup(batch.image_index_n, {k: every[k].float() for k in kinds})


def pooled_features(cache: ActivationCache, sae: SAE | None, kinds: Sequence[str], device: torch.device,
                    group_size: int = 64) -> dict[str, np.ndarray | sp.csr_matrix]:
    """Image-level features, max-pooled over patches (as the metrics pool them); codes kept sparse (CSR)."""
    parts: dict[str, list[Any]] = {k: [] for k in kinds}
    for group in iter_features(cache, sae, kinds, device, group_size):
        for k in kinds:
            pooled = group.feats[k].amax(dim=1).cpu().numpy().astype(np.float32)
            parts[k].append(sp.csr_matrix(pooled) if k == "codes" else pooled)
    out: dict[str, np.ndarray | sp.csr_matrix] = {}
    for k in kinds:
        if not parts[k]:
            raise ConfigError(f"{cache.path}: the cache holds no images")
        out[k] = sp.vstack(parts[k]).tocsr() if k == "codes" else np.concatenate(parts[k])
    return out


def scores_of(task: str, per_kind: dict[str, float | None]) -> dict[str, float | None]:
    """``{features: value}`` → ``{task:<task>:<features>: value}``."""
    return {task_metric(task, kind): value for kind, value in per_kind.items()}


def headline(scores: dict[str, float | None], task: str) -> float | None:
    """The headline number: the task on codes when computed, else on raw features."""
    for kind in ("codes", "raw", "recon"):
        name = task_metric(task, kind)
        if name in scores:
            return scores[name]
    return None


def write_task_result(out_dir: Path | str, result: TaskResult, config: FrozenConfig, inputs: dict[str, Any],
                      started: float) -> Path:
    """``<out_dir>/task_<task>.json``: the result record shared with the metrics (visae.results.record)."""
    from visae.io import safe_join

    path = safe_join(out_dir, f"task_{result.task}.json")  # the task name comes from a config file
    return write_result_record(path, result.metric, result.value, result.model_dump(mode="json"),
                               config.to_dict(),
                               inputs, seconds={"total": time.perf_counter() - started})
