"""M5 — monosemanticity (paper §4.3, App. K): do a feature's top images look alike to another backbone?

For every live feature (maximum image-level activation > 0), up to 2048 sampled uniformly without
replacement, the N = 16 images with the highest max-pooled activation are found in one streaming pass.
Their embeddings under an independent evaluator backbone (Table 5 pairing) are L2-normalized, and the
feature's score is the activation-weighted mean pairwise cosine, with min-max weights over the whole
evaluation set. M5_raw is the mean over scored features; the baseline is the same statistic with uniform
weights over 1000 random groups of N images from the pool of embedded images; M5_norm =
(raw − baseline) / (1 − baseline) is the headline. Each feature's score also splits exactly into
within-class and between-class parts (App. K): MS = ρ_within·MS_within + ρ_between·MS_between.
"""

from __future__ import annotations

import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from visae.errors import ConfigError
from visae.io import atomic_write_with
from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.embeddings import BackboneEmbedder, EmbeddingStore, ImageEmbedder, open_cache_source
from visae.metrics.encode import EncodedBatch, PooledFeatures
from visae.uncertainty import BootstrapConfig, Interval, percentile_interval, weighted_replicates

FEATURES_FILE = "m5_features.parquet"


class M5Config(MetricConfig):
    """Settings for M5; defaults are the paper's Table 2 / App. K."""

    top_n: int = Field(16, ge=2, description="top-activating images per feature, N (paper Table 2: 16)")
    max_features: int = Field(2048, ge=1, description="live features scored at most, sampled uniformly "
                              "without replacement (paper App. K: 2048)")
    n_baseline_groups: int = Field(1000, ge=1, description="random image groups in the baseline "
                                   "(paper App. K: 1000)")
    seed: int = Field(42, description="seed of the feature sample and of the baseline groups")
    tie_rule: Literal["earliest"] = Field(
        "earliest", description="which images fill a feature's top N when activations tie (notably at 0 for "
        "a feature active on fewer than N images): 'earliest' = the lowest cache positions. Tied zero-weight "
        "images add nothing to MS but enter the baseline's image pool (visaebench's argpartition leaves the "
        "choice to the sort)")
    evaluator: str = Field("auto", description="embedding backbone: 'auto' (paper Table 5 pairing) or a "
                           "registered backbone name")
    allow_same_backbone: bool = Field(False, description="permit the SAE's own backbone as evaluator "
                                      "(circular; the paper never does this)")
    evaluator_weights: str | None = Field(None, description="local weights file for the evaluator backbone "
                                          "(None: its default weights)")
    evaluator_image_size: int | None = Field(None, ge=1, description="input resolution of the evaluator "
                                             "(None: its default)")
    embedding: Literal["patch_mean", "cls"] = Field(
        "patch_mean", description="evaluator embedding: 'patch_mean' (default; the authors' visaebench: mean "
        "of the evaluator's block-`embedding_layer` patch tokens after its final norm; a CNN's pooled head) "
        "or 'cls' (the CLS token after the final norm); the paper only says 'embedded with the designated "
        "cross-backbone evaluator' (App. K)")
    embedding_layer: int = Field(11, ge=0, description="evaluator block whose patch tokens 'patch_mean' "
                                 "averages (visaebench evaluator_layer: 11; clamped to the last block)")
    embed_batch_size: int = Field(32, ge=1, description="images per evaluator forward pass")
    embeddings_dir: str | None = Field(None, description="where embedding stores live (None: "
                                       "<cache_dir>/embeddings)")
    write_features: bool = Field(True, description="write m5_features.parquet to the output folder")


class M5Result(MetricResult):
    """M5 summary: normalized score (headline), its parts, and the within/between-class decomposition."""

    raw: float | None = Field(None, description="M5_raw: mean MS over scored features with a defined score")
    baseline: float | None = Field(None, description="M5_baseline: mean unweighted pairwise cosine of "
                                   "random image groups from the embedded pool")
    raw_std_error: float | None = Field(None, description="standard error of M5_raw over features")
    baseline_std_error: float | None = Field(None, description="standard error of the baseline over groups")
    evaluator: str = Field("", description="backbone whose embeddings were used")
    embedding_kind: str = Field("", description="what the evaluator's embedding is")
    n_features: int = Field(0, description="features of the SAE")
    n_live: int = Field(0, description="features with maximum image-level activation > 0")
    n_scored: int = Field(0, description="live features sampled for scoring")
    n_defined: int = Field(0, description="scored features with a nonzero weight denominator")
    top_n: int = Field(0, description="top images per feature actually used (N, or fewer images)")
    n_embedded_images: int = Field(0, description="distinct images embedded (the baseline pool)")
    ms_within_mean: float | None = Field(None, description="mean MS_within over features where defined")
    ms_between_mean: float | None = Field(None, description="mean MS_between over features where defined")
    rho_within_mean: float | None = Field(None, description="mean within-class pair-mass fraction")
    n_within_defined: int = Field(0, description="features with within-class pairs of nonzero weight")
    n_between_defined: int = Field(0, description="features with between-class pairs of nonzero weight")


# --- streaming top-N -------------------------------------------------------------------------------


_LOW_31 = 0x7FFFFFFF


def _pack_keys(values_fn: torch.Tensor, index_n: torch.Tensor) -> torch.Tensor:
    """int64 keys that order like (value descending, image index ascending): one ``topk`` then gives a
    deterministic top-N in which ties go to the earlier image."""
    bits = values_fn.float().contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ _LOW_31, bits).to(torch.int64)  # float order as signed ints
    return (ordered << 32) | (_LOW_31 - index_n.to(torch.int64))


def _unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, image indices int64) of keys made by :func:`_pack_keys`."""
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ _LOW_31, ordered)
    return bits.view(torch.float32), _LOW_31 - (keys & 0xFFFFFFFF)


class StreamingTopN:
    """Running top-N images per feature of image-level (max-pooled) codes, plus per-feature min and max.

    Memory is O(N × F) whatever the number of images. Ties go to the earlier image, so the result equals a
    stable descending sort of all images' activations.
    """

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.keys_fk: torch.Tensor | None = None
        self.min_f: torch.Tensor | None = None
        self.max_f: torch.Tensor | None = None
        self.n_images = 0

    def update(self, pooled_nf: torch.Tensor, image_index_n: np.ndarray) -> None:
        """Merge one group of images' pooled codes ``[n, F]`` (rows = cache positions ``image_index_n``)."""
        pooled_nf = pooled_nf.float()
        n = pooled_nf.shape[0]
        if n == 0:
            return
        index_n = torch.as_tensor(np.asarray(image_index_n, dtype=np.int64), device=pooled_nf.device)
        if int(index_n.min()) < 0 or int(index_n.max()) > _LOW_31:
            raise ValueError("image indices must lie in 0 … 2^31 − 1")
        batch_max_f = pooled_nf.amax(dim=0)
        self.n_images += n
        if self.keys_fk is None or self.min_f is None or self.max_f is None:
            self.min_f = pooled_nf.amin(dim=0)
            self.max_f = batch_max_f
            keys_fn = _pack_keys(pooled_nf.T, index_n[None, :])
            self.keys_fk = torch.topk(keys_fn, min(self.top_n, n), dim=1, sorted=True).values
            return
        self.min_f = torch.minimum(self.min_f, pooled_nf.amin(dim=0))
        self.max_f = torch.maximum(self.max_f, batch_max_f)
        if self.keys_fk.shape[1] < self.top_n:
            keys_fn = torch.cat([self.keys_fk, _pack_keys(pooled_nf.T, index_n[None, :])], dim=1)
            self.keys_fk = torch.topk(keys_fn, min(self.top_n, keys_fn.shape[1]), dim=1, sorted=True).values
            return
        # Only features whose batch maximum beats their current N-th value can change (a tie never does:
        # the earlier image wins), and with sparse codes these are few.
        kth_f = _unpack_keys(self.keys_fk[:, -1])[0]
        changed = torch.nonzero(batch_max_f > kth_f).squeeze(1)
        if changed.numel() == 0:
            return
        keys_cn = torch.cat([self.keys_fk[changed],
                             _pack_keys(pooled_nf[:, changed].T, index_n[None, :])], dim=1)
        self.keys_fk[changed] = torch.topk(keys_cn, self.top_n, dim=1, sorted=True).values

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values ``[k, F]`` float32, image indices ``[k, F]`` int64, min ``[F]``, max ``[F]``);
        k = min(N, images seen); rows in descending order."""
        if self.keys_fk is None or self.min_f is None or self.max_f is None:
            raise ValueError("no images were seen")
        values_fk, index_fk = _unpack_keys(self.keys_fk)
        return (values_fk.T.cpu().numpy(), index_fk.T.cpu().numpy(),
                self.min_f.cpu().numpy(), self.max_f.cpu().numpy())


def sample_features(live_f: np.ndarray, max_features: int, seed: int) -> np.ndarray:
    """Sorted indices of live features to score: all of them, or ``max_features`` drawn uniformly
    without replacement with ``seed``."""
    live = np.flatnonzero(live_f)
    if len(live) <= max_features:
        return live
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return np.sort(rng.choice(live, size=max_features, replace=False))


# --- the score -------------------------------------------------------------------------------------


@dataclass
class FeatureScores:
    """Per-feature App. K quantities (float64; NaN where the denominator is zero)."""

    ms: np.ndarray
    ms_within: np.ndarray
    ms_between: np.ndarray
    rho_within: np.ndarray


def minmax_weights(values_fk: np.ndarray, min_f: np.ndarray, max_f: np.ndarray) -> np.ndarray:
    """w = (a − min_n a) / (max_n a − min_n a) per feature, min and max over all evaluation images;
    zero where the feature is constant."""
    lo = min_f.astype(np.float64)[:, None]
    span = max_f.astype(np.float64)[:, None] - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (values_fk.astype(np.float64) - lo) / safe, 0.0)


def feature_scores(emb_fke: np.ndarray, weights_fk: np.ndarray, labels_fk: np.ndarray,
                   chunk: int = 256) -> FeatureScores:
    """Activation-weighted mean pairwise cosine of each feature's top images, and its within/between split.

    ``emb_fke``: embeddings of each feature's k top images (any scale; L2-normalized here, in float64).
    Pairs are u < v with weight ω_uv = w_u·w_v (App. K).
    """
    n_feat, k = weights_fk.shape
    triu_kk = np.triu(np.ones((k, k), dtype=bool), 1)
    out = {name: np.full(n_feat, np.nan) for name in ("ms", "ms_within", "ms_between", "rho_within")}
    for s in range(0, n_feat, chunk):
        e = emb_fke[s:s + chunk].astype(np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        cos_fkk = np.einsum("fke,fle->fkl", e, e)
        w = weights_fk[s:s + chunk].astype(np.float64)
        omega_fkk = w[:, :, None] * w[:, None, :] * triu_kk
        lab = labels_fk[s:s + chunk]
        same_fkk = lab[:, :, None] == lab[:, None, :]
        total = omega_fkk.sum(axis=(1, 2))
        num = (omega_fkk * cos_fkk).sum(axis=(1, 2))
        mass_w = (omega_fkk * same_fkk).sum(axis=(1, 2))
        num_w = (omega_fkk * cos_fkk * same_fkk).sum(axis=(1, 2))
        mass_b = (omega_fkk * ~same_fkk).sum(axis=(1, 2))
        num_b = (omega_fkk * cos_fkk * ~same_fkk).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["ms"][s:s + chunk] = np.where(total > 0, num / total, np.nan)
            out["ms_within"][s:s + chunk] = np.where(mass_w > 0, num_w / mass_w, np.nan)
            out["ms_between"][s:s + chunk] = np.where(mass_b > 0, num_b / mass_b, np.nan)
            out["rho_within"][s:s + chunk] = np.where(total > 0, mass_w / total, np.nan)
    return FeatureScores(**out)


def random_group_baseline(emb_pe: np.ndarray, group_size: int, n_groups: int, seed: int,
                          chunk: int = 100) -> np.ndarray:
    """Unweighted mean pairwise cosine of ``n_groups`` random groups (each without replacement) of the
    pool ``emb_pe``; one value per group."""
    n_pool = emb_pe.shape[0]
    size = min(group_size, n_pool)
    if size < 2:
        return np.zeros(0)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    groups_gk = np.stack([rng.choice(n_pool, size=size, replace=False) for _ in range(n_groups)])
    e = emb_pe.astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    triu_kk = np.triu(np.ones((size, size), dtype=bool), 1)
    out = np.empty(n_groups)
    for s in range(0, n_groups, chunk):
        g = e[groups_gk[s:s + chunk]]
        cos_gkk = np.einsum("gke,gle->gkl", g, g)
        out[s:s + chunk] = cos_gkk[:, triu_kk].mean(axis=1)
    return out


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def _sem(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def _interval(ms_f: np.ndarray, baseline_g: np.ndarray, bootstrap: BootstrapConfig) -> Interval:
    """Percentile interval of normalized M5, resampling features and baseline groups independently."""
    ms = ms_f[np.isfinite(ms_f)]
    raw_b = weighted_replicates(ms, np.arange(len(ms)), bootstrap)
    base_b = weighted_replicates(baseline_g, np.arange(len(baseline_g)) + (1 << 40), bootstrap)
    with np.errstate(invalid="ignore", divide="ignore"):
        value_b = np.where(base_b < 1.0, (raw_b - base_b) / (1.0 - base_b), np.nan)
    return percentile_interval(value_b, bootstrap.level)


def compute_m5(top_values_kf: np.ndarray, top_index_kf: np.ndarray, min_f: np.ndarray, max_f: np.ndarray,
               labels_n: np.ndarray, embed: ImageEmbedder, config: M5Config,
               evaluator: str = "", embedding_kind: str = "",
               bootstrap: BootstrapConfig | None = None,
               baseline_out: dict[str, np.ndarray] | None = None) -> tuple[M5Result, pd.DataFrame]:
    """M5 from the streamed top-N statistics; ``embed`` maps cache positions to evaluator embeddings.

    Returns the summary and the per-feature table (one row per scored feature). With ``bootstrap``, the
    interval resamples M5's own units: the scored features and the baseline's random groups.
    """
    n_feat = top_values_kf.shape[1]
    n_top = top_values_kf.shape[0]
    live_f = max_f > 0
    scored = sample_features(live_f, config.max_features, config.seed)
    base = {"metric": "m5", "higher_is_better": True, "evaluator": evaluator,
            "embedding_kind": embedding_kind,
            "n_features": n_feat, "n_live": int(live_f.sum()), "n_scored": len(scored), "top_n": n_top}
    empty = pd.DataFrame(columns=["feature", "ms", "ms_within", "ms_between", "rho_within",
                                  "top_images", "top_activations", "top_weights", "n_top"])
    if len(scored) == 0:
        return M5Result(value=None, note="no live features (every feature's maximum activation is 0)",
                        **base), empty
    if n_top < 2:
        return M5Result(value=None, note="fewer than 2 evaluation images; no pairs to compare", **base), empty

    values_fk = top_values_kf[:, scored].T
    index_fk = top_index_kf[:, scored].T
    weights_fk = minmax_weights(values_fk, min_f[scored], max_f[scored])
    pool_p, pos_fk = np.unique(index_fk, return_inverse=True)
    pos_fk = pos_fk.reshape(index_fk.shape)
    emb_pe = np.asarray(embed(pool_p), dtype=np.float64)
    if emb_pe.ndim != 2 or emb_pe.shape[0] != len(pool_p):
        raise ValueError(f"M5 embedder returned shape {emb_pe.shape} for {len(pool_p)} images")
    labels_fk = np.asarray(labels_n)[index_fk]
    scores = feature_scores(emb_pe[pos_fk], weights_fk, labels_fk)
    baseline_g = random_group_baseline(emb_pe, n_top, config.n_baseline_groups, config.seed)
    if baseline_out is not None:
        baseline_out["groups"] = baseline_g

    raw = _mean(scores.ms)
    baseline = float(baseline_g.mean()) if len(baseline_g) else None
    value: float | None = None
    note = ""
    if raw is None:
        note = "no scored feature has a nonzero weight denominator"
    elif baseline is None or baseline >= 1.0:
        note = "baseline is undefined or 1 (all pool embeddings identical); normalized M5 undefined"
    else:
        value = (raw - baseline) / (1.0 - baseline)
    result = M5Result(
        value=value, note=note, raw=raw, baseline=baseline,
        raw_std_error=_sem(scores.ms), baseline_std_error=_sem(baseline_g),
        n_defined=int(np.isfinite(scores.ms).sum()), n_embedded_images=len(pool_p),
        ms_within_mean=_mean(scores.ms_within), ms_between_mean=_mean(scores.ms_between),
        rho_within_mean=_mean(scores.rho_within),
        n_within_defined=int(np.isfinite(scores.ms_within).sum()),
        n_between_defined=int(np.isfinite(scores.ms_between).sum()),
        **base,
    )
    if value is not None and bootstrap is not None and bootstrap.n_boot > 0:
        result = typing.cast(M5Result, result.with_interval(_interval(scores.ms, baseline_g, bootstrap),
                                                             unit="scored features and baseline groups"))
    table = pd.DataFrame({
        "feature": scored.astype(np.int64),
        "ms": scores.ms, "ms_within": scores.ms_within, "ms_between": scores.ms_between,
        "rho_within": scores.rho_within,
        "top_images": list(index_fk.astype(np.int64)),
        "top_activations": list(values_fk.astype(np.float32)),
        "top_weights": list(weights_fk.astype(np.float32)),
        "n_top": np.full(len(scored), n_top, dtype=np.int64),
    })
    return result, table


def write_features_table(table: pd.DataFrame, path: Path) -> None:
    """Write the per-feature table as parquet, atomically."""
    atomic_write_with(path, lambda p: table.to_parquet(p, index=False))


# --- evaluator pairing ---------------------------------------------------------------------------


def default_evaluator(backbone: str) -> str:
    """The paper's Table 5 evaluator for an SAE trained on ``backbone`` (registry pairing; offline: the other
    offline backbone). ConfigError when the backbone has no pairing."""
    from visae.backbones.registry import evaluator_for

    return evaluator_for(backbone)


def canonical_backbone(name: str) -> str:
    """Registry short name of ``name`` (a short name, or the timm name one stands for); else ``name``."""
    from visae.backbones.registry import backbone_entry

    entry = backbone_entry(name)
    return entry.name if entry is not None else name


def resolve_evaluator(config: M5Config, backbone: str) -> str:
    """The evaluator backbone name; refuses the SAE's own backbone unless ``allow_same_backbone``."""
    name = default_evaluator(backbone) if config.evaluator == "auto" else config.evaluator
    if canonical_backbone(name) == canonical_backbone(backbone):
        if not config.allow_same_backbone:
            raise ConfigError(f"metrics.m5.evaluator: {name!r} is the backbone the SAE was trained on, which "
                              "makes M5 circular; choose another backbone or set allow_same_backbone: true")
        warnings.warn(f"M5 evaluator {name!r} is the SAE's own backbone (allow_same_backbone: true); "
                      "the score is circular and not comparable with the paper's", stacklevel=2)
    return name


# --- the metric ----------------------------------------------------------------------------------


@register_metric
class M5Monosemanticity(Metric[M5Config]):
    """M5 over the shared encoding pass; the evaluator embedder can be injected as
    ``ctx.extras["m5_embedder"]`` (an :class:`ImageEmbedder`, e.g. with planted embeddings)."""

    name = "m5"
    needs_pooled = False
    needs_stream = True

    def __init__(self, config: M5Config, ctx: EvalContext) -> None:
        super().__init__(config, ctx)
        self.embedder: ImageEmbedder | None = ctx.extras.get("m5_embedder")
        # Resolve (and refuse) the evaluator before the encoding pass, not after it.
        if self.embedder is None:
            self.evaluator = resolve_evaluator(config, ctx.backbone)
        else:
            self.evaluator = str(ctx.extras.get("m5_evaluator", getattr(self.embedder, "name", "custom")))
        self.tracker = StreamingTopN(config.top_n)
        self.store: EmbeddingStore | None = None

    def update(self, batch: EncodedBatch) -> None:
        """Pool this group's codes over patches and merge them into the running top-N."""
        self.tracker.update(batch.pooled_codes().to_dense(), batch.image_index_n)

    def _backbone_embedder(self) -> tuple[ImageEmbedder, str]:
        from visae.backbones.base import preprocessing_of
        from visae.backbones.registry import load_backbone

        backbone = load_backbone(self.evaluator, device=str(self.ctx.device),
                                 weights_path=self.config.evaluator_weights,
                                 image_size=self.config.evaluator_image_size)
        cache = self.ctx.cache
        if backbone.weights_id == cache.manifest.weights_id and not self.config.allow_same_backbone:
            raise ConfigError(f"metrics.m5.evaluator: {self.evaluator!r} has the same weights as the cache's "
                              f"backbone {cache.manifest.backbone!r}; choose another evaluator or set "
                              "allow_same_backbone: true")
        source, source_index_n = open_cache_source(cache)
        inner = BackboneEmbedder(backbone, source, source_index_n, batch_size=self.config.embed_batch_size,
                                 embedding=self.config.embedding, layer=self.config.embedding_layer)
        store_dir = (Path(self.config.embeddings_dir) if self.config.embeddings_dir
                     else Path(cache.path) / "embeddings")
        self.store = EmbeddingStore(store_dir, self.evaluator, backbone.weights_id, cache.image_ids,
                                    embedding_kind=inner.embedding_kind,
                                    preprocessing=preprocessing_of(backbone))
        store = self.store

        def embed(index_n: np.ndarray) -> np.ndarray:
            return store.get(index_n, inner)

        return embed, inner.embedding_kind

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Sample live features, embed the union of their top images, score, write the feature table."""
        if self.tracker.n_images == 0:
            return M5Result(metric="m5", value=None, higher_is_better=True, note="no images were encoded",
                            evaluator=self.evaluator)
        values_kf, index_kf, min_f, max_f = self.tracker.result()
        kind = str(self.ctx.extras.get("m5_embedding_kind", getattr(self.embedder, "embedding_kind", "")))
        loaded: dict[str, str] = {}

        def embed_lazily(index_n: np.ndarray) -> np.ndarray:
            # The evaluator is loaded only when some feature is scored, never for a dead SAE.
            if self.embedder is None:
                self.embedder, loaded["kind"] = self._backbone_embedder()
            return np.asarray(self.embedder(index_n))

        result, table = compute_m5(values_kf, index_kf, min_f, max_f, self.ctx.cache.labels, embed_lazily,
                                   self.config, evaluator=self.evaluator, embedding_kind=kind,
                                   bootstrap=self.ctx.bootstrap)
        if "kind" in loaded:
            result = result.model_copy(update={"embedding_kind": loaded["kind"]})
        if self.config.write_features and self.ctx.out_dir is not None and len(table):
            write_features_table(table, self.ctx.out_dir / FEATURES_FILE)
        return result
