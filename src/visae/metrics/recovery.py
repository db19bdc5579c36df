"""Recovery — how well an SAE finds the features planted in a synthetic cache (``visae synth``).

The SAE's decoder atoms are matched one-to-one to the planted atoms by the Hungarian algorithm on
``|cos|`` (:func:`scipy.optimize.linear_sum_assignment`). Reported, with the definitions of SAELens'
SynthSAEBench (``sae_lens.synthetic.evals``) where it has one:

- ``mcc``: mean ``|cos|`` of the matched pairs (``min(F, F*)`` of them);
- ``precision``, ``recall``, ``f1``: each latent, as a detector of its best-matching planted feature (argmax
  ``|cos|``, not the Hungarian match), is scored over the evaluation tokens: TP = both fire, FP = only the
  latent, FN = only the feature; per-latent precision, recall and F1 (0 where undefined), averaged over all
  latents;
- ``feature_precision``, ``feature_recall``, ``feature_f1`` at ``cos_threshold`` (stated in the result): the
  fraction of latents that fire at all and whose best match has ``|cos| ≥ τ``, the fraction of planted
  features whose Hungarian match has ``|cos| ≥ τ``, and their harmonic mean;
- absorption of the planted children: for every (parent, child) edge of the hierarchy, on the tokens where
  the child is active (so the parent is too), the fraction where the child's matched latent fires and the
  parent's is silent; an edge is *absorbed* above ``absorbed_fraction``;
- dead latents (never fire on the evaluation tokens) and dense latents (fire on more than
  ``dense_threshold`` of them);
- per matched planted feature, M1's per-feature mean Moran's I of the learned latent beside that of the true
  feature (the same rules as M1, on the true codes) and the planted expectation; in
  ``recovery_features.parquet``.

The true codes of every evaluation image are re-drawn from the ground-truth file in the cache folder; a cache
without one is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field

from visae.metrics.base import EvalContext, Metric, MetricConfig, MetricResult, register_metric
from visae.metrics.m1_spatial import M1Accumulator, M1Config

if TYPE_CHECKING:
    from visae.metrics.encode import EncodedBatch, PooledFeatures
    from visae.synth.truth import GroundTruth

FEATURES_TABLE = "recovery_features.parquet"


class RecoveryConfig(MetricConfig):
    """Settings of the recovery metric."""

    cos_threshold: float = Field(0.9, ge=0.0, le=1.0,
                                 description="a planted feature counts as recovered when its matched "
                                             "latent's decoder has |cos| ≥ this with its atom")
    dense_threshold: float = Field(0.2, gt=0.0, le=1.0,
                                   description="a latent is dense when it fires on more than this fraction "
                                               "of the evaluation tokens")
    absorbed_fraction: float = Field(0.5, ge=0.0, le=1.0,
                                     description="a (parent, child) edge is absorbed when, on the child's "
                                                 "tokens, the child latent fires without the parent latent "
                                                 "on more than this fraction")
    m1: M1Config = Field(default_factory=M1Config,
                         description="M1's rules for the per-feature Moran's I of learned and true features")
    write_features: bool = Field(True,
                                 description=f"write per planted feature detail to <out>/{FEATURES_TABLE}")


class RecoveryResult(MetricResult):
    """Recovery of planted features: ``value`` = SynthSAEBench F1 (higher is better)."""

    mcc: float = Field(description="mean |cos| of the Hungarian-matched (latent, planted atom) pairs")
    precision: float = Field(description="mean over latents of token-level precision vs the best-matching "
                                         "planted feature (SynthSAEBench)")
    recall: float = Field(description="mean over latents of token-level recall (SynthSAEBench)")
    f1: float = Field(description="mean over latents of token-level F1 (SynthSAEBench)")
    cos_threshold: float = Field(description="τ of the feature_* numbers")
    feature_precision: float = Field(description="live latents whose best match has |cos| ≥ τ, fraction")
    feature_recall: float = Field(description="planted features whose Hungarian match has |cos| ≥ τ, "
                                              "fraction")
    feature_f1: float = Field(description="harmonic mean of feature_precision and feature_recall")
    n_recovered: int = Field(description="planted features with a match at |cos| ≥ τ")
    n_features_true: int = Field(description="planted features F*")
    n_latents: int = Field(description="SAE latents F")
    dead: int = Field(description="latents that never fire on the evaluation tokens")
    dense: int = Field(description="latents that fire on more than dense_threshold of the tokens")
    sae_l0: float = Field(description="mean active latents per token")
    true_l0: float = Field(description="mean active planted features per token")
    n_edges: int = Field(description="(parent, child) edges of the planted hierarchy with both matched")
    absorption: float | None = Field(description="mean over edges of the absorbed fraction of the child's "
                                                 "tokens (None without a hierarchy)")
    n_absorbed: int = Field(description="edges absorbed above absorbed_fraction")
    m1_true: float | None = Field(description="mean per-feature Moran's I of the true codes, over the "
                                              "matched features evaluable in both")
    m1_learned: float | None = Field(description="mean per-feature Moran's I of their matched latents")
    m1_corr: float | None = Field(description="Pearson correlation of learned vs true per-feature I "
                                              "(≥ 3 features)")
    m1_mae: float | None = Field(description="mean |learned − true| per-feature I")
    n_m1_pairs: int = Field(description="matched features evaluable in both")
    n_tokens: int = Field(description="evaluation tokens")


def cosine_matrix(decoder_ld: np.ndarray, atoms_fd: np.ndarray) -> np.ndarray:
    """``|cos|`` between every decoder row and every planted atom, ``[L, F*]``."""
    dec = decoder_ld / np.maximum(np.linalg.norm(decoder_ld, axis=1, keepdims=True), 1e-12)
    atoms = atoms_fd / np.maximum(np.linalg.norm(atoms_fd, axis=1, keepdims=True), 1e-12)
    return np.abs(dec @ atoms.T)


def hungarian_match(cos_lf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching maximizing the summed ``|cos|``: ``(latent of each planted feature (−1: none),
    matched |cos| of each planted feature (0: none))``."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-cos_lf)
    latent_f = np.full(cos_lf.shape[1], -1, dtype=np.int64)
    latent_f[cols] = rows
    cos_f = np.zeros(cos_lf.shape[1])
    cos_f[cols] = cos_lf[rows, cols]
    return latent_f, cos_f


def classification_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float, float]:
    """Mean over latents of precision, recall and F1 (each 0 where its denominator is 0), SynthSAEBench's
    ``ClassificationMetricsCalculator.compute``."""
    if len(tp) == 0:
        return 0.0, 0.0, 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1), 0.0)
    return float(prec.mean()), float(rec.mean()), float(f1.mean())


def true_codes_batch(truth: GroundTruth, scene_n: np.ndarray, n_patches: int,
                     labels_n: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True codes of a group of images as token-sorted COO ``(rows, features, values)`` (rows are
    ``image · P + patch`` within the group)."""
    parts = truth.codes(scene_n)
    rows, feats, vals = [], [], []
    for j, (label, patch_k, feature_k, value_k) in enumerate(parts):
        if labels_n is not None and int(labels_n[j]) != label:
            from visae.errors import CacheError

            raise CacheError(f"{truth.folder}: row {j} of a group has label {int(labels_n[j])} but its scene "
                             f"has class {label}; the cache does not belong to this ground truth")
        rows.append(j * n_patches + patch_k)
        feats.append(feature_k)
        vals.append(value_k)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    f = np.concatenate(feats) if feats else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    order = np.lexsort((f, r))
    return torch.from_numpy(r[order]), torch.from_numpy(f[order]), torch.from_numpy(v[order])


class RecoveryAccumulator:
    """Streams encoded groups and their true codes into the token-level counts."""

    def __init__(self, truth: GroundTruth, decoder_ld: np.ndarray, config: RecoveryConfig) -> None:
        self.truth, self.config = truth, config
        self.n_latents, self.n_true = decoder_ld.shape[0], truth.n_features
        self.cos_lf = cosine_matrix(decoder_ld, truth.dictionary_fd)
        self.latent_f, self.cos_f = hungarian_match(self.cos_lf)
        self.best_l = torch.from_numpy(self.cos_lf.argmax(axis=1) if self.n_true else
                                       np.zeros(self.n_latents, np.int64))
        self.tp = torch.zeros(self.n_latents, dtype=torch.float64)
        self.fire = torch.zeros(self.n_latents, dtype=torch.float64)
        self.true_count = torch.zeros(self.n_true, dtype=torch.float64)
        self.n_tokens = 0
        self.n_entries = 0
        edges = [(p, c) for p, c in truth.edges if self.latent_f[p] >= 0 and self.latent_f[c] >= 0]
        self.edges = edges
        self.child_edge = np.full(self.n_true, -1, dtype=np.int64)
        for e, (_, c) in enumerate(edges):
            self.child_edge[c] = e
        self.edge_tokens = np.zeros(len(edges))
        self.edge_absorbed = np.zeros(len(edges))
        self.m1_learned = M1Accumulator(self.n_latents, config.m1, torch.device("cpu"))
        self.m1_true = M1Accumulator(self.n_true, config.m1, torch.device("cpu"))

    def update(self, batch: EncodedBatch, scene_n: np.ndarray) -> None:
        """Add one encoded group (``scene_n``: its images' scene indices)."""
        from visae.metrics.encode import EncodedBatch
        from visae.sae.sparse import SparseCodes, row_offsets

        n, p = batch.n_images, batch.n_patches
        codes = batch.codes
        rows, cols = codes.rows_n.cpu(), codes.cols_n.cpu()
        self.n_tokens += n * p
        self.n_entries += int(rows.numel())
        t_rows, t_feats, t_vals = true_codes_batch(self.truth, scene_n, p, np.asarray(batch.labels_n))
        self.true_count += torch.bincount(t_feats, minlength=self.n_true).double()
        self.fire += torch.bincount(cols, minlength=self.n_latents).double()
        key_true = t_rows * self.n_true + t_feats  # sorted: rows then features
        key_sae = rows * self.n_true + self.best_l[cols]
        hit = torch.isin(key_sae, key_true)
        self.tp += torch.bincount(cols[hit], minlength=self.n_latents).double()
        if self.edges:
            self._absorption(rows, cols, t_rows, t_feats)
        self.m1_learned.update_batch(batch)
        true_codes = SparseCodes(t_rows, t_feats, t_vals, row_offsets(t_rows, n * p), n * p, self.n_true, 0.0)
        empty = torch.zeros(n, p, 0)
        self.m1_true.update_batch(EncodedBatch(batch.image_index_n, np.asarray(batch.labels_n), empty, None,
                                               empty, batch.grid_hw, codes=true_codes))

    def _absorption(self, rows: torch.Tensor, cols: torch.Tensor, t_rows: torch.Tensor,
                    t_feats: torch.Tensor) -> None:
        edge_k = torch.from_numpy(self.child_edge)[t_feats]
        on = edge_k >= 0
        if not bool(on.any()):
            return
        tok, edge = t_rows[on], edge_k[on].numpy()
        parents = np.array([p for p, _ in self.edges])
        children = np.array([c for _, c in self.edges])
        lat_parent = torch.from_numpy(self.latent_f[parents[edge]])
        lat_child = torch.from_numpy(self.latent_f[children[edge]])
        key_sae = rows * self.n_latents + cols
        child_fires = torch.isin(tok * self.n_latents + lat_child, key_sae)
        parent_fires = torch.isin(tok * self.n_latents + lat_parent, key_sae)
        absorbed = (child_fires & ~parent_fires).numpy()
        np.add.at(self.edge_tokens, edge, 1.0)
        np.add.at(self.edge_absorbed, edge, absorbed.astype(np.float64))

    def result(self) -> tuple[RecoveryResult, dict[str, np.ndarray]]:
        """The summary and the per-planted-feature columns."""
        cfg = self.config
        tp = self.tp.numpy()
        fire = self.fire.numpy()
        fp = fire - tp
        fn = self.true_count.numpy()[self.best_l.numpy()] - tp
        precision, recall, f1 = classification_scores(tp, fp, fn)
        matched = self.latent_f >= 0
        mcc = float(self.cos_f[matched].mean()) if matched.any() else 0.0
        recovered = int((self.cos_f >= cfg.cos_threshold).sum())
        live = fire > 0
        best_cos = self.cos_lf.max(axis=1) if self.n_true else np.zeros(self.n_latents)
        feat_prec = float((live & (best_cos >= cfg.cos_threshold)).sum() / max(int(live.sum()), 1))
        feat_rec = recovered / max(self.n_true, 1)
        feat_f1 = 2 * feat_prec * feat_rec / (feat_prec + feat_rec) if feat_prec + feat_rec > 0 else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            edge_rate = np.where(self.edge_tokens > 0, self.edge_absorbed / np.maximum(self.edge_tokens, 1),
                                 np.nan)
        seen = self.edge_tokens > 0
        learned_i, learned_n = self.m1_learned.feature_means()
        true_i, true_n = self.m1_true.feature_means()
        need = cfg.m1.min_valid_images
        lat = np.where(matched, self.latent_f, 0)
        learned_f = np.where(matched, learned_i[lat], np.nan)
        learned_nf = np.where(matched, learned_n[lat], 0)
        both = (true_n >= need) & (learned_nf >= need)
        m1_t, m1_l = true_i[both], learned_f[both]
        corr = None
        if both.sum() >= 3 and m1_t.std() > 0 and m1_l.std() > 0:
            corr = float(np.corrcoef(m1_t, m1_l)[0, 1])
        n_tokens = max(self.n_tokens, 1)
        result = RecoveryResult(
            metric="recovery", value=f1, higher_is_better=True, mcc=mcc, precision=precision, recall=recall,
            f1=f1, cos_threshold=cfg.cos_threshold, feature_precision=feat_prec, feature_recall=feat_rec,
            feature_f1=feat_f1, n_recovered=recovered, n_features_true=self.n_true, n_latents=self.n_latents,
            dead=int((fire == 0).sum()), dense=int((fire / n_tokens > cfg.dense_threshold).sum()),
            sae_l0=self.n_entries / n_tokens, true_l0=float(self.true_count.sum()) / n_tokens,
            n_edges=int(seen.sum()), absorption=float(edge_rate[seen].mean()) if seen.any() else None,
            n_absorbed=int((edge_rate[seen] > cfg.absorbed_fraction).sum()),
            m1_true=float(m1_t.mean()) if both.any() else None,
            m1_learned=float(m1_l.mean()) if both.any() else None, m1_corr=corr,
            m1_mae=float(np.abs(m1_t - m1_l).mean()) if both.any() else None, n_m1_pairs=int(both.sum()),
            n_tokens=self.n_tokens,
            note="" if self.edges or not self.truth.edges else "no hierarchy edge has both ends matched")
        child_rate = np.full(self.n_true, np.nan)
        for e, (_, c) in enumerate(self.edges):
            child_rate[c] = edge_rate[e]
        columns = {
            "feature": np.arange(self.n_true), "role": self.truth.column("role"),
            "kind": self.truth.column("kind"), "parent": self.truth.column("parent"),
            "latent": self.latent_f, "cos": self.cos_f, "recovered": self.cos_f >= cfg.cos_threshold,
            "true_tokens": self.true_count.numpy(),
            "expected_morans_i": self.truth.column("expected_morans_i"),
            "m1_true": true_i, "m1_true_images": true_n, "m1_learned": learned_f,
            "m1_learned_images": learned_nf, "absorbed_fraction": child_rate,
        }
        return result, columns


def write_features(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Per planted feature: match, cosine, M1 of the true and the learned feature, absorption (Parquet)."""
    import pandas as pd

    from visae.io import atomic_write_with

    df = pd.DataFrame({k: (v.astype(str) if v.dtype.kind in "OU" else v) for k, v in columns.items()})
    atomic_write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


@register_metric
class RecoveryMetric(Metric[RecoveryConfig]):
    """Registered as ``recovery``."""

    name: ClassVar[str] = "recovery"

    def __init__(self, config: RecoveryConfig, ctx: EvalContext) -> None:
        from visae.errors import ConfigError
        from visae.synth.truth import GroundTruth

        super().__init__(config, ctx)
        truth = GroundTruth.load(ctx.cache.path)
        if truth.dictionary_fd.shape[1] != ctx.sae.d_in:
            raise ConfigError(f"recovery: the SAE reads {ctx.sae.d_in}-d inputs but the cache's planted "
                              f"atoms are {truth.dictionary_fd.shape[1]}-d")
        self.scene_n = truth.scene_indices(ctx.cache.image_ids)
        decoder = ctx.sae.W_dec.detach().float().cpu().numpy()
        self.acc = RecoveryAccumulator(truth, decoder, config)

    def update(self, batch: EncodedBatch) -> None:
        """Count one group's token-level hits against its re-drawn true codes."""
        self.acc.update(batch, self.scene_n[np.asarray(batch.image_index_n, dtype=np.int64)])

    def finalize(self, pooled: PooledFeatures | None) -> MetricResult:
        """Summarize; write the per-feature table when an output folder is set."""
        result, columns = self.acc.result()
        if self.ctx.out_dir is not None and self.config.write_features:
            write_features(self.ctx.out_dir / FEATURES_TABLE, columns)
        return result
