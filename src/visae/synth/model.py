"""The generative model behind ``visae synth``: planted dictionary, footprints, classes and hierarchy.

A token (patch ``p`` of image ``i``) is ``x_p = b + Σ_f a_pf · d_f + σ·ε_p``: a constant offset ``b``, the
planted unit atoms ``d_f`` (rows of the dictionary, overlap set by ``overlap``) weighted by the true codes
``a_pf ≥ 0``, and isotropic Gaussian noise. A feature present in an image fires on its footprint there:

- ``blob``: a disc of the feature's radius around a uniform centre (an object);
- ``region``: a half-plane of random orientation covering ``region_area`` of the grid (background, texture);
- ``random``: each patch independently with probability ``random_density`` (the spatial null).

On its footprint a feature's value is its base magnitude times ``1 + jitter·N(0, 1)`` (clipped at 5 %).
Which features are present follows the image's class (its ``class_features`` are present with ``p_class``,
other classes' with ``p_off_class``) plus generic features (``features_per_image`` expected). With a
hierarchy, a superclass's parent feature is present whenever one of its classes' features is (and fires on
their patches: child implies parent on every token), and a class's first feature brings exactly one of its
``variants``, which fires on the inner part of the class blob.

Every image is drawn from its own generator ``rng([seed, 1, split, i])``: an image's tokens do not depend on
which other images are drawn, so a cache is resumable and its shards bitwise reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from visae.synth.config import SynthConfig

KINDS = ("blob", "region", "random")
ROLES = ("parent", "class", "variant", "generic")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MIN_ACTIVE_PATCHES = 5
"""M1's rule (paper Table 2): a map is scored when ≥ 5 patches are active."""


@dataclass(frozen=True)
class Scene:
    """One image's true codes, sparse: feature ``feature_k`` has value ``value_k`` at patch ``patch_k``."""

    label: int
    patch_k: np.ndarray
    feature_k: np.ndarray
    value_k: np.ndarray

    def dense(self, n_patches: int, n_features: int) -> np.ndarray:
        """The codes as a dense ``[P, F]`` float32 array."""
        out = np.zeros((n_patches, n_features), dtype=np.float32)
        out[self.patch_k, self.feature_k] = self.value_k
        return out


def planted_dictionary(rng: np.random.Generator, n_features: int, d: int, overlap: float) -> np.ndarray:
    """``[F, D]`` unit rows: orthonormal when ``F ≤ D`` (random Gaussian directions otherwise), each mixed
    with a shared rank-``max(1, D/8)`` subspace in proportion ``overlap``."""
    if n_features <= d:
        q, _ = np.linalg.qr(rng.standard_normal((d, n_features)))
        base = q.T
    else:
        base = rng.standard_normal((n_features, d))
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    if overlap > 0:
        rank = max(1, d // 8)
        sub, _ = np.linalg.qr(rng.standard_normal((d, rank)))
        shared = rng.standard_normal((n_features, rank)) @ sub.T
        shared /= np.linalg.norm(shared, axis=1, keepdims=True)
        base = (1.0 - overlap) * base + overlap * shared
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    return base.astype(np.float64)


def morans_i_maps(maps_khw: np.ndarray) -> np.ndarray:
    """Moran's I of each map ``[K, H, W]``, binary queen weights, ``I = P/ΣW · Σ w z z / Σ z²`` (NaN for a
    constant map)."""
    _, h, w = maps_khw.shape
    z = maps_khw - maps_khw.mean(axis=(1, 2), keepdims=True)
    pad = np.pad(z, ((0, 0), (1, 1), (1, 1)))
    neigh = sum(pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    s0 = 2 * (h * (w - 1) + w * (h - 1) + 2 * (h - 1) * (w - 1))
    den = (z * z).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (h * w / s0) * (z * neigh).sum(axis=(1, 2)) / den, np.nan)


class SyntheticModel:
    """The planted model of one :class:`SynthConfig`: atoms, per-feature footprints and magnitudes, class
    and hierarchy structure; draws any image's true codes and tokens."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        f, c, k, v, g = cfg.n_features, cfg.n_classes, cfg.class_features, cfg.variants, cfg.n_groups
        self.n_patches = cfg.grid * cfg.grid
        rng = np.random.default_rng([cfg.seed, 0])
        self.dictionary_fd = planted_dictionary(rng, f, cfg.d, cfg.overlap)
        bias = rng.standard_normal(cfg.d)
        self.bias_d = bias / np.linalg.norm(bias) * cfg.bias_norm
        lo, hi = np.log(cfg.magnitude_min), np.log(cfg.magnitude_max)
        self.magnitude_f = np.exp(rng.uniform(lo, hi, f))
        self.radius_f = cfg.blob_radius * rng.uniform(0.8, 1.2, f)
        self.role_f = np.full(f, ROLES.index("generic"), dtype=np.int64)
        self.parent_f = np.full(f, -1, dtype=np.int64)
        self.class_of_f = np.full(f, -1, dtype=np.int64)
        self.group_of_class = (np.arange(c) % g) if g else np.full(c, -1, dtype=np.int64)
        self.class_base = g
        self.variant_base = g + c * k
        self.generic_base = g + c * (k + v)
        self.role_f[:g] = ROLES.index("parent")
        for cls in range(c):
            feats = self.class_features(cls)
            self.role_f[feats] = ROLES.index("class")
            self.class_of_f[feats] = cls
            if g:
                self.parent_f[feats] = self.group_of_class[cls]
            var = self.variant_features(cls)
            self.role_f[var] = ROLES.index("variant")
            self.class_of_f[var] = cls
            if len(var):
                self.parent_f[var] = feats[0]
        kind = np.full(f, KINDS.index(cfg.class_kind), dtype=np.int64)
        kind[:g] = KINDS.index("random" if cfg.class_kind == "random" else "region")
        n_gen = f - self.generic_base
        n_blob = round(cfg.blob_share * n_gen)
        n_region = min(n_gen - n_blob, round(cfg.region_share * n_gen))
        gen_kind = np.array([0] * n_blob + [1] * n_region + [2] * (n_gen - n_blob - n_region), dtype=np.int64)
        kind[self.generic_base:] = rng.permutation(gen_kind)
        self.kind_f = kind
        self.p_generic = min(1.0, cfg.features_per_image / n_gen) if n_gen else 0.0
        gy, gx = np.mgrid[0:cfg.grid, 0:cfg.grid]
        self._py = gy.reshape(-1) + 0.5
        self._px = gx.reshape(-1) + 0.5

    # --- structure ------------------------------------------------------------------------------
    def class_features(self, cls: int) -> np.ndarray:
        """Indices of the informative features of class ``cls``."""
        k = self.cfg.class_features
        return np.arange(self.class_base + cls * k, self.class_base + (cls + 1) * k)

    def variant_features(self, cls: int) -> np.ndarray:
        """Indices of the variant (child) features of class ``cls``."""
        v = self.cfg.variants
        return np.arange(self.variant_base + cls * v, self.variant_base + (cls + 1) * v)

    @cached_property
    def class_names(self) -> list[str]:
        """``g<group>-c<class>`` with a hierarchy, else ``c<class>``."""
        if self.cfg.n_groups:
            return [f"g{int(self.group_of_class[c])}-c{c}" for c in range(self.cfg.n_classes)]
        return [f"c{c}" for c in range(self.cfg.n_classes)]

    def label(self, index: int) -> int:
        """Class of image ``index`` (balanced: ``index mod n_classes``)."""
        return int(index % self.cfg.n_classes)

    # --- drawing ----------------------------------------------------------------------------------
    def _footprint(self, rng: np.random.Generator, feature: int) -> np.ndarray:
        """Patch indices a present feature fires on in one image (never empty)."""
        kind = KINDS[int(self.kind_f[feature])]
        p = self.n_patches
        if kind == "blob":
            cy, cx = rng.uniform(0, self.cfg.grid, 2)
            dist = np.hypot(self._py - cy, self._px - cx)
            mask = dist <= self.radius_f[feature]
            mask[int(np.argmin(dist))] = True
        elif kind == "region":
            theta = rng.uniform(0, 2 * np.pi)
            proj = np.cos(theta) * self._px + np.sin(theta) * self._py + rng.uniform(-0.5, 0.5, p) * 1e-3
            n_on = max(1, round(self.cfg.region_area * p))
            mask = np.zeros(p, dtype=bool)
            mask[np.argpartition(-proj, n_on - 1)[:n_on]] = True  # the n_on patches farthest along θ
        else:
            mask = rng.random(p) < self.cfg.random_density
            mask[int(rng.integers(p))] = True
        return np.flatnonzero(mask)

    def _inner(self, rng: np.random.Generator, patches: np.ndarray) -> np.ndarray:
        """A variant's footprint inside its class feature's: the patches nearest the blob's centre (about
        half of them, at least one)."""
        cy, cx = self._py[patches].mean(), self._px[patches].mean()
        dist = np.hypot(self._py[patches] - cy, self._px[patches] - cx) + rng.uniform(0, 1e-6, len(patches))
        keep = max(1, (len(patches) + 1) // 2)
        return np.sort(patches[np.argsort(dist)[:keep]])

    def scene(self, index: int, split: str = "train") -> Scene:
        """True codes of image ``index`` of ``split`` (drawn from ``rng([seed, 1, split, index])``)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1, SPLIT_CODES[split], index])
        label = self.label(index)
        c, k, g = cfg.n_classes, cfg.class_features, cfg.n_groups
        u_class = rng.random((c, k))
        p_ck = np.where(np.arange(c)[:, None] == label, cfg.p_class, cfg.p_off_class)
        present_ck = u_class < p_ck
        variant_pick = rng.integers(0, max(cfg.variants, 1), c)
        u_parent = rng.random(g)
        present_gen = rng.random(cfg.n_features - self.generic_base) < self.p_generic
        footprints: dict[int, np.ndarray] = {}
        for cls, j in zip(*np.nonzero(present_ck), strict=True):
            feat = int(self.class_features(int(cls))[j])
            footprints[feat] = self._footprint(rng, feat)
            if cfg.variants and j == 0:
                footprints[int(self.variant_features(int(cls))[variant_pick[cls]])] = self._inner(
                    rng, footprints[feat])
        for group in range(g):
            children = [f for f in footprints if self.parent_f[f] == group]
            if children or u_parent[group] < cfg.p_parent_alone:
                own = self._footprint(rng, group)
                footprints[group] = np.union1d(own, np.concatenate([footprints[f] for f in children])
                                               if children else own)
        for j in np.flatnonzero(present_gen):
            feat = self.generic_base + int(j)
            footprints[feat] = self._footprint(rng, feat)
        feats = sorted(footprints)
        patch_k = np.concatenate([footprints[f] for f in feats]) if feats else np.zeros(0, np.int64)
        feature_k = np.repeat(np.asarray(feats, dtype=np.int64), [len(footprints[f]) for f in feats])
        scale = 1.0 + cfg.jitter * rng.standard_normal(len(patch_k))
        value_k = (self.magnitude_f[feature_k] * np.maximum(scale, 0.05)).astype(np.float32)
        return Scene(label, patch_k.astype(np.int64), feature_k, value_k)

    def tokens(self, scene: Scene, index: int, split: str = "train") -> np.ndarray:
        """Patch tokens ``[P, D]`` (float32) of a drawn scene (noise: :meth:`_noise_generator`)."""
        return self._tokens([scene], [index], split)[0].numpy()

    def _noise_generator(self, index: int, split: str) -> torch.Generator:
        """A torch generator seeded from ``SeedSequence([seed, 2, split, index])`` (torch's normal sampler is
        about 3× numpy's at these sizes)."""
        state = np.random.SeedSequence([self.cfg.seed, 2, SPLIT_CODES[split], index]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))

    @cached_property
    def _atoms32(self) -> np.ndarray:
        return self.dictionary_fd.astype(np.float32)

    def _tokens(self, scenes: list[Scene], indices: list[int], split: str) -> torch.Tensor:
        """Per image, its codes on its present features times their atoms, all images in one batched
        product, plus the offset and each image's noise; float32 ``[B, P, D]``."""
        cfg, p = self.cfg, self.n_patches
        present = [np.unique(sc.feature_k, return_inverse=True) for sc in scenes]
        k_max = max([len(f) for f, _ in present] + [1])
        codes_bpk = np.zeros((len(scenes), p, k_max), dtype=np.float32)
        atoms_bkd = np.zeros((len(scenes), k_max, cfg.d), dtype=np.float32)
        for j, (sc, (feats, local)) in enumerate(zip(scenes, present, strict=True)):
            codes_bpk[j, sc.patch_k, local] = sc.value_k  # a feature fires once per patch
            atoms_bkd[j, :len(feats)] = self._atoms32[feats]
        out = torch.bmm(torch.from_numpy(codes_bpk), torch.from_numpy(atoms_bkd))
        out += torch.from_numpy(self.bias_d.astype(np.float32))
        if cfg.noise > 0:
            for j, i in enumerate(indices):
                out[j].add_(torch.randn(p, cfg.d, generator=self._noise_generator(i, split)), alpha=cfg.noise)
        return out

    def batch_tokens(self, indices: list[int], split: str = "train") -> torch.Tensor:
        """Tokens ``[B, P, D]`` of images ``indices`` of ``split``."""
        if not indices:
            return torch.zeros(0, self.n_patches, self.cfg.d)
        return self._tokens([self.scene(i, split) for i in indices], list(indices), split)

    # --- known answers ---------------------------------------------------------------------------
    def expected_morans_i(self, n_scenes: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Per feature, the mean Moran's I of its maps over ``n_scenes`` draws from an independent stream
        (maps with ≥ 5 active patches and variance > 1e-8, M1's rules) and how many maps it averaged.
        Spatially random features have the exact value −1/(P − 1) (:func:`exact_null`)."""
        f, p, h = self.cfg.n_features, self.n_patches, self.cfg.grid
        total, count = np.zeros(f), np.zeros(f, dtype=np.int64)
        for i in range(n_scenes):
            sc = self.scene(10**9 + i, "test")
            feats, starts = np.unique(sc.feature_k, return_index=True)
            sizes = np.diff(np.append(starts, len(sc.feature_k)))
            ok = feats[sizes >= MIN_ACTIVE_PATCHES]
            if not len(ok):
                continue
            rows = np.searchsorted(ok, sc.feature_k)
            on = (rows < len(ok)) & (ok[np.minimum(rows, len(ok) - 1)] == sc.feature_k)
            maps_kp = np.zeros((len(ok), p))
            maps_kp[rows[on], sc.patch_k[on]] = sc.value_k[on]
            keep = maps_kp.var(axis=1) > 1e-8
            vals = morans_i_maps(maps_kp[keep].reshape(-1, h, h))
            good = np.isfinite(vals)
            np.add.at(total, ok[keep][good], vals[good])
            np.add.at(count, ok[keep][good], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan), count

    def exact_null(self) -> float:
        """E[I] = −1/(P − 1): the expectation of a spatially random feature's Moran's I."""
        return -1.0 / (self.n_patches - 1)
