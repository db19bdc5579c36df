"""The single encoding pass shared by every metric: patch codes, reconstructions and pooled image features.

An evaluation cache is streamed in groups of images (bounded memory whatever its size); every group is
normalized with the SAE's stored statistics, encoded and decoded once, and handed to each metric.

Codes travel sparse. For the families whose inference rule is a threshold or a per-token top-k
(BatchTopK, JumpReLU, ReLU, TopK) the encoder matmul runs in row chunks fused with the selection, so no
``[tokens, F]`` matrix larger than one chunk is ever held; the reconstruction goes through the active
codes alone with the training kernel :func:`visae.sae.sparse.sparse_decode`. Other SAEs are encoded
densely per group and converted. A dense ``[n, P, F]`` view (:attr:`EncodedBatch.codes_npf`) is built
only when a consumer asks for it. Image-level features (max over patches) of raw activations,
reconstructions and codes are collected in the same pass; pooled codes stay sparse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from visae.cache.reader import ActivationCache
from visae.sae.base import SAE, InferenceRule
from visae.sae.sparse import SparseCodes, row_offsets, select_topk, sparse_decode

DEFAULT_GROUP_BYTES = 256 * 2**20
# Encoder rows per fused matmul + selection chunk: [rows, F] pre-activations stay ~50 MiB at F 6144 on CPU
# (2048 rows run the GEMM ~10 % faster than 1024 on a 2-core EPYC; larger chunks gain nothing more).
CPU_CHUNK_ROWS = 2048
GPU_CHUNK_ROWS = 16384


def _coo(rows_n: torch.Tensor, cols_n: torch.Tensor, vals_n: torch.Tensor, n_rows: int,
         n_cols: int) -> SparseCodes:
    return SparseCodes(rows_n, cols_n, vals_n, row_offsets(rows_n, n_rows), n_rows, n_cols, 0.0)


def _flat_select(x_rc: torch.Tensor, keep: Callable[[np.ndarray], np.ndarray] | None,
                 keep_t: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions (row-major) and values of the entries of ``x_rc`` that pass the rule."""
    flat = x_rc.reshape(-1)
    if x_rc.device.type == "cpu" and keep is not None:  # numpy's flatnonzero is several times torch's nonzero
        idx = torch.from_numpy(np.flatnonzero(keep(flat.numpy())))
    else:
        idx = torch.nonzero(keep_t(flat)).squeeze(1)
    return idx, flat[idx]


def dense_to_sparse(codes_tf: torch.Tensor) -> SparseCodes:
    """The non-zero entries of a ``[T, F]`` code matrix, row-major."""
    n_rows, n_cols = codes_tf.shape
    idx, vals = _flat_select(codes_tf.contiguous(), lambda a: a != 0, lambda t: t != 0)
    return _coo(idx // n_cols, idx % n_cols, vals, n_rows, n_cols)


def _owner(cls: type, name: str) -> type:
    """The class of ``cls``'s MRO that defines attribute ``name``."""
    return next(c for c in cls.__mro__ if name in vars(c))


def inference_rule(sae: SAE) -> InferenceRule | None:
    """The family's :meth:`~visae.sae.base.SAE.inference_rule` hook, or None (dense path) when a subclass
    redefines :meth:`encode` or :meth:`pre_acts` below the class that states the rule: the rule then no
    longer describes what ``encode`` does."""
    cls = type(sae)
    owner = _owner(cls, "inference_rule")
    if not all(issubclass(owner, _owner(cls, name)) for name in ("encode", "pre_acts")):
        return None
    return sae.inference_rule()


@torch.no_grad()
def sparse_encode(sae: SAE, x_td: torch.Tensor, rule: InferenceRule | None = None,
                  chunk_rows: int | None = None) -> SparseCodes:
    """Inference codes of normalized tokens ``x_td`` as sparse COO, equal to ``sae.encode(x_td)``.

    With a known ``rule`` the encoder matmul runs in row chunks fused with the selection (no dense
    ``[T, F]``); otherwise ``sae.encode`` runs once and its output is converted.
    """
    rule = rule if rule is not None else inference_rule(sae)
    if rule is None:
        return dense_to_sparse(sae.encode(x_td))
    n_rows, n_cols = x_td.shape[0], sae.d_sae
    chunk = chunk_rows or (CPU_CHUNK_ROWS if x_td.device.type == "cpu" else GPU_CHUNK_ROWS)
    W, b = sae.W_enc, sae.b_enc
    thr = rule.threshold
    thr_np = thr.cpu().numpy() if isinstance(thr, torch.Tensor) else thr
    n_buf = min(chunk, max(n_rows, 1))
    # chunk-sized work buffers, reused: no [T, D] or [T, F] temporary is ever allocated
    xc_buf = torch.empty(n_buf, x_td.shape[1], dtype=torch.result_type(x_td, sae.b_dec), device=x_td.device)
    buf = torch.empty(n_buf, n_cols, dtype=W.dtype, device=W.device)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for r0 in range(0, n_rows, chunk):
        r1 = min(n_rows, r0 + chunk)
        xc = torch.sub(x_td[r0:r1], sae.b_dec, out=xc_buf[:r1 - r0])
        pre = torch.addmm(b, xc, W, out=buf[:r1 - r0])
        if thr is None:
            c = select_topk(pre, rule.k)
            parts.append((c.rows_n + r0, c.cols_n, c.vals_n.to(pre.dtype)))
            continue
        idx, vals = _flat_select(pre, lambda a: (a.reshape(-1, n_cols) > thr_np).reshape(-1),
                                 lambda t: (t.view(-1, n_cols) > thr).view(-1))
        parts.append((idx // n_cols + r0, idx % n_cols, vals))
    if not parts:
        empty = torch.empty(0, dtype=torch.int64, device=x_td.device)
        return _coo(empty, empty, torch.empty(0, dtype=W.dtype, device=x_td.device), n_rows, n_cols)
    rows, cols, vals = (torch.cat([p[i] for p in parts]) for i in range(3))
    return _coo(rows.to(x_td.device), cols.to(x_td.device), vals, n_rows, n_cols)


class EncodedBatch:
    """One group of images after encoding.

    Codes are held sparse (:attr:`codes`, token-major COO over the ``n·P`` tokens); :attr:`codes_npf`
    is the dense ``[n, P, F]`` view, built on first use only. Either form may be given.
    """

    def __init__(self, image_index_n: np.ndarray, labels_n: np.ndarray, acts_npd: torch.Tensor,
                 codes_npf: torch.Tensor | None, recon_npd: torch.Tensor, grid_hw: tuple[int, int],
                 codes: SparseCodes | None = None) -> None:
        if codes_npf is None and codes is None:
            raise ValueError("EncodedBatch needs codes_npf or codes")
        self.image_index_n = image_index_n
        """Positions of these images in the evaluation cache."""
        self.labels_n = labels_n
        """Their integer labels."""
        self.acts_npd = acts_npd
        """Activations in the SAE's normalized input space."""
        self.recon_npd = recon_npd
        """Reconstructions in the same space as ``acts_npd``."""
        self.grid_hw = grid_hw
        """Patch grid; P = H × W, row-major."""
        self._dense = codes_npf
        self._sparse = codes
        self._keys: torch.Tensor | None = None
        self._pooled: SparseCodes | None = None

    @property
    def n_images(self) -> int:
        return int((self._dense if self._dense is not None else self.acts_npd).shape[0])

    @property
    def n_patches(self) -> int:
        return int((self._dense if self._dense is not None else self.acts_npd).shape[1])

    @property
    def d_sae(self) -> int:
        return self._sparse.n_cols if self._sparse is not None else int(self._dense.shape[-1])  # type: ignore[union-attr]

    @property
    def codes(self) -> SparseCodes:
        """Sparse codes: rows are tokens ``image · P + patch``, columns features."""
        if self._sparse is None:
            assert self._dense is not None
            self._sparse = dense_to_sparse(self._dense.reshape(self.n_images * self.n_patches, -1))
        return self._sparse

    @property
    def codes_npf(self) -> torch.Tensor:
        """Dense inference codes ``[n, P, F]`` (built from the sparse codes on first use)."""
        if self._dense is None:
            assert self._sparse is not None
            self._dense = self._sparse.to_dense().reshape(self.n_images, self.n_patches, -1)
        return self._dense

    def image_feature_keys(self) -> torch.Tensor:
        """For every sparse entry, ``image · F + feature`` (the key of its image-level map)."""
        if self._keys is None:
            c = self.codes
            self._keys = torch.div(c.rows_n, self.n_patches, rounding_mode="floor") * c.n_cols + c.cols_n
        return self._keys

    def pooled_codes(self) -> SparseCodes:
        """Max over patches of the codes, sparse ``[n, F]`` (rows are images), equal to
        ``codes_npf.amax(1)``."""
        if self._pooled is None:
            self._pooled = pool_sparse(self.codes, self.image_feature_keys(), self.n_images, self.n_patches)
        return self._pooled


def pool_sparse(codes: SparseCodes, keys_n: torch.Tensor, n_images: int, n_patches: int) -> SparseCodes:
    """Image-level max of token codes; a map with an inactive patch also counts that patch's 0."""
    n_cols = codes.n_cols
    size = n_images * n_cols
    vals = codes.vals_n
    top = torch.full((size,), float("-inf"), dtype=vals.dtype, device=vals.device)
    top.scatter_reduce_(0, keys_n, vals, reduce="amax")
    count = torch.bincount(keys_n, minlength=size)
    top = torch.where(count == n_patches, top, top.clamp_min(0.0))
    top = torch.where(count > 0, top, torch.zeros_like(top))
    idx, v = _flat_select(top, lambda a: a != 0, lambda t: t != 0)
    return _coo(idx // n_cols, idx % n_cols, v, n_images, n_cols)


def auto_group_size(n_patches: int, d_sae: int, requested: int,
                    budget_bytes: int = DEFAULT_GROUP_BYTES) -> int:
    """Images per group: the requested size, reduced so that dense codes fit in ``budget_bytes``."""
    fit = max(1, budget_bytes // max(1, n_patches * d_sae * 4))
    return max(1, min(requested, fit))


def sparse_group_size(n_patches: int, d_in: int, l0: float, requested: int,
                      budget_bytes: int = DEFAULT_GROUP_BYTES) -> int:
    """Images per group when codes stay sparse: activations, reconstruction and ~``l0`` entries per token
    fit."""
    per_token = 3 * d_in * 4 + max(1.0, l0) * 24
    fit = int(budget_bytes // max(1.0, n_patches * per_token))
    return max(1, min(requested, fit))


def _normalize_owned(sae: SAE, acts_td: torch.Tensor) -> torch.Tensor:
    """``sae.normalize(acts_td)``, in place (the group is ours alone) unless a subclass replaced the rule
    with one that may not take ``inplace``."""
    if type(sae).normalize is not SAE.normalize:
        return sae.normalize(acts_td)
    return sae.normalize(acts_td, inplace=True)


@torch.no_grad()
def encode_stream(sae: SAE, cache: ActivationCache, group_size: int = 64,
                  device: torch.device | None = None, budget_bytes: int = DEFAULT_GROUP_BYTES,
                  dense_codes: bool = True) -> Iterator[EncodedBatch]:
    """Yield every image group of ``cache`` encoded by ``sae`` (in eval mode, inference thresholds).

    ``dense_codes=False`` promises that no consumer reads :attr:`EncodedBatch.codes_npf`, so groups are
    sized for sparse codes; otherwise they are sized so that the dense view fits in ``budget_bytes``.
    """
    if sae.d_in != cache.d_model:
        from visae.errors import CheckpointError

        raise CheckpointError(f"SAE d_in {sae.d_in} does not match the cache's width {cache.d_model} "
                              f"({cache.path})")
    device = device or next(sae.parameters()).device
    sae = sae.to(device).eval()
    layout = cache.layout
    rule = inference_rule(sae)
    if dense_codes or rule is None:
        n_group = auto_group_size(layout.n_patches, sae.d_sae, group_size, budget_bytes)
    else:
        n_group = sparse_group_size(layout.n_patches, sae.d_in, float(sae.k or 256), group_size, budget_bytes)
    dtype = sae.W_enc.dtype if sae.W_enc.dtype == torch.float64 else torch.float32
    labels = cache.labels
    for index_n, acts_npd in cache.iter_images(group_size=n_group, normalize=False):
        acts_npd = acts_npd.to(device=device, dtype=dtype)
        n, p, d = acts_npd.shape
        x_nd = _normalize_owned(sae, acts_npd.reshape(n * p, d))
        codes = sparse_encode(sae, x_nd, rule)
        recon = sparse_decode(codes, sae.W_dec, sae.b_dec)
        yield EncodedBatch(index_n, labels[index_n], x_nd.reshape(n, p, d), None, recon.reshape(n, p, d),
                           (layout.grid_h, layout.grid_w), codes=codes)


@dataclass
class PooledFeatures:
    """Image-level features of the whole evaluation set (max over patches).

    From a collector with a spill folder the arrays are read-only memory maps of files there, valid while
    that folder exists.
    """

    labels_n: np.ndarray
    acts_nd: np.ndarray
    """Max-pooled normalized activations, float32."""
    recon_nd: np.ndarray
    """Max-pooled reconstructions, float32."""
    codes_nf: sp.csr_matrix
    """Max-pooled codes, sparse float32 (int32 column indices)."""


class _Rows:
    """Rows appended in order: kept in memory, or written to a raw file read back as a memory map."""

    def __init__(self, dtype: type[np.generic], tail: tuple[int, ...] = (), path: Path | None = None) -> None:
        self.dtype, self.tail, self.path, self.n = np.dtype(dtype), tail, path, 0
        self._parts: list[np.ndarray] = []
        self._file = open(path, "wb") if path is not None else None  # noqa: SIM115 (closed in result)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        self.n += len(rows)
        if self._file is not None:
            rows.tofile(self._file)
        else:
            self._parts.append(rows)

    def result(self) -> np.ndarray:
        shape = (self.n, *self.tail)
        if self._file is None:
            return np.concatenate(self._parts) if self._parts else np.empty(shape, self.dtype)
        self._file.close()
        if self.n == 0 or 0 in self.tail:
            return np.empty(shape, self.dtype)
        return np.memmap(str(self.path), dtype=self.dtype, mode="r", shape=shape)


class PooledCollector:
    """Accumulates max-pooled features batch by batch (codes sparse throughout).

    With ``spill_dir`` the pooled activations, reconstructions and codes go to files there as they come
    and come back memory-mapped: the evaluation's private memory then stays flat whatever the number of
    images (the probes read them in row chunks).
    """

    def __init__(self, spill_dir: Path | None = None) -> None:
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
        self._spill = spill_dir
        self._labels: list[np.ndarray] = []
        self._acts: _Rows | None = None
        self._recon: _Rows | None = None
        self._vals = _Rows(np.float32, path=spill_dir / "codes_data.f32" if spill_dir else None)
        self._cols = _Rows(np.int32, path=spill_dir / "codes_indices.i32" if spill_dir else None)
        self._row_nnz: list[np.ndarray] = []
        self._n_cols = 0

    def _features(self, name: str, d: int) -> _Rows:
        return _Rows(np.float32, (d,), self._spill / f"{name}.f32" if self._spill else None)

    def update(self, batch: EncodedBatch) -> None:
        """Pool one batch over patches and keep it."""
        acts = batch.acts_npd.amax(dim=1).float().cpu().numpy()
        if self._acts is None or self._recon is None:
            d = acts.shape[1]
            self._acts, self._recon = self._features("acts", d), self._features("recon", d)
        self._labels.append(batch.labels_n)
        self._acts.append(acts)
        self._recon.append(batch.recon_npd.amax(dim=1).float().cpu().numpy())
        pooled = batch.pooled_codes()  # row-major COO: its rows in order are CSR
        self._vals.append(pooled.vals_n.float().cpu().numpy())
        self._cols.append(pooled.cols_n.cpu().numpy())
        self._row_nnz.append(np.diff(pooled.offsets_b.cpu().numpy(), append=pooled.nnz))  # its row offsets
        self._n_cols = pooled.n_cols

    def result(self) -> PooledFeatures:
        """All pooled features in cache order."""
        if not self._labels or self._acts is None or self._recon is None:
            raise ValueError("no images were encoded")
        vals, cols = self._vals.result(), self._cols.result()
        # int32 offsets beside the int32 indices (scipy would otherwise copy the indices to one index dtype)
        idx_dtype = np.int32 if len(vals) < 2**31 else np.int64
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(self._row_nnz))]).astype(idx_dtype)
        codes = sp.csr_matrix((vals, cols, indptr), shape=(len(indptr) - 1, self._n_cols), copy=False)
        return PooledFeatures(labels_n=np.concatenate(self._labels), acts_nd=self._acts.result(),
                              recon_nd=self._recon.result(), codes_nf=codes)
