"""Row-chunked reading of probe inputs: dense matrices, CSR matrices and :class:`RowSubset` views of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp

ArrayLike: TypeAlias = Any
"""A dense ``np.ndarray`` or a scipy sparse matrix (scipy's sparse types are not statically typed)."""


CHUNK_VALUES = 2**21
"""Stored values per row chunk of a sparse matrix (~50 MiB of chunk copies and float64 temporaries)."""


def _chunk_rows(matrix: sp.csr_matrix) -> int:
    """Rows per chunk holding about :data:`CHUNK_VALUES` stored values on average."""
    return max(1, int(CHUNK_VALUES * matrix.shape[0] / max(1, matrix.nnz)))


class RowSubset:
    """Rows ``rows`` of a CSR matrix, read a chunk at a time (:data:`CHUNK_VALUES`) and never copied whole.

    The ranking and column helpers below accept one wherever they accept a matrix, so that a probe's
    training rows of the evaluation's pooled codes (a memory-mapped file, possibly larger than the memory
    one wants to hold) need no in-memory copy.
    """

    def __init__(self, matrix: sp.csr_matrix, rows: np.ndarray) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), int(self.matrix.shape[1])

    def chunks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(first row, CSR of the next rows)`` in order."""
        step = _chunk_rows(self.matrix)
        for s in range(0, len(self.rows), step):
            yield s, self.matrix[self.rows[s:s + step]]


def _row_chunks(x_nf: ArrayLike) -> Iterator[tuple[int, ArrayLike]]:
    """``(first row, float64 block)`` covering ``x_nf``: a dense matrix in one block, sparse ones (CSR,
    :class:`RowSubset`) in row chunks, so that no float64 copy of all the stored values is held."""
    if isinstance(x_nf, RowSubset):
        parts: Iterator[tuple[int, sp.csr_matrix]] = x_nf.chunks()
    elif sp.issparse(x_nf):
        x = sp.csr_matrix(x_nf)
        step = _chunk_rows(x)
        parts = ((s, x[s:s + step]) for s in range(0, x.shape[0], step))
    else:
        yield 0, np.asarray(x_nf, dtype=np.float64)  # float32 cancels in the sums of squares
        return
    for s, part in parts:
        yield s, sp.csr_matrix((part.data.astype(np.float64), part.indices, part.indptr), shape=part.shape)


def take_columns(x_nf: ArrayLike, cols: np.ndarray) -> np.ndarray:
    """Dense float32 ``x[:, cols]`` (sparse inputs, and a :class:`RowSubset` chunk by chunk, are sliced
    before densifying)."""
    if isinstance(x_nf, RowSubset):
        out = np.empty((x_nf.shape[0], len(cols)), dtype=np.float32)
        for s, part in x_nf.chunks():
            out[s:s + part.shape[0]] = part[:, cols].toarray()
        return out
    sub = x_nf[:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float32)
