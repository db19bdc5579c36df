"""The training token stream: one or several caches read as one shuffled stream of patch tokens.

Each epoch visits every stored token exactly once. Contiguous chunks of images (about
``CHUNK_TOKENS`` tokens, a few MiB each, one sequential read) are taken in a seeded random order from
all shards of all caches, gathered into a shuffle buffer of about ``buffer_tokens`` tokens and permuted
inside it; the tokens left over after the last full batch of a buffer are carried into the next one.
The plan (chunk order, permutations) depends only on the seed and the caches' shapes, so the fast path
(``preadv`` into one preallocated buffer, read one buffer ahead by a background thread) and the
reference path (memory-mapped slices, no thread) yield identical batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from visae.errors import CacheError

if TYPE_CHECKING:
    from visae.cache.reader import ActivationCache

DEFAULT_BUFFER_TOKENS = 1 << 17
"""Tokens held (fp16) by the shuffle buffer: 192 MiB at D=768 (the fast path holds up to two buffers)."""

CHUNK_TOKENS = 4096
"""The sampler reads images in contiguous chunks of about this many tokens (6 MiB at D=768)."""

Chunk = tuple[int, int, int, int]
"""(cache index, shard, first row, stop row)."""


@dataclass(frozen=True)
class _Window:
    """One shuffle buffer of the plan: the carried tokens plus ``chunks``, permuted by ``perm``."""

    chunks: list[Chunk]
    perm: np.ndarray
    n_full: int
    first_step: int
    skip: bool
    new_epoch: bool


class TokenStream:
    """Several caches of one backbone layer as one token stream, normalized with their pooled statistics."""

    def __init__(self, caches: Sequence[ActivationCache]) -> None:
        if not caches:
            raise CacheError("TokenStream: no caches given")
        self.caches = list(caches)
        first = self.caches[0].manifest
        for c in self.caches[1:]:
            m = c.manifest
            for field in ("d_model", "backbone", "weights_id", "layer"):
                if getattr(m, field) != getattr(first, field):
                    raise CacheError(f"{c.path}: {field} is {getattr(m, field)!r} but {self.caches[0].path} "
                                     f"has {getattr(first, field)!r}; one training stream needs caches of "
                                     "the same backbone, weights and layer")
        self.d_model = first.d_model
        self.n_tokens = sum(c.n_tokens for c in self.caches)
        self.mean_d, self.std = self._pooled_stats()
        self._mean_t = torch.from_numpy(self.mean_d)

    def _pooled_stats(self) -> tuple[np.ndarray, float]:
        """Per-dimension mean and scalar std of all caches' tokens together (exact pooling of their stats)."""
        if len(self.caches) == 1:
            return self.caches[0].mean_d, self.caches[0].std
        n = np.array([c.n_tokens for c in self.caches], dtype=np.float64)
        means = np.stack([c.mean_d.astype(np.float64) for c in self.caches])
        mean = (n[:, None] * means).sum(0) / n.sum()
        var = (n * (np.array([c.std for c in self.caches]) ** 2
                    + ((means - mean) ** 2).mean(1))).sum() / n.sum()
        return mean.astype(np.float32), float(np.sqrt(var))

    @property
    def paths(self) -> list[str]:
        """The caches' folders."""
        return [str(c.path) for c in self.caches]

    @property
    def hashes(self) -> list[str]:
        """The caches' content hashes."""
        return [c.manifest.hash for c in self.caches]

    def normalize(self, acts: torch.Tensor) -> torch.Tensor:
        """(acts − mean_d) / std with the stream's pooled statistics."""
        mean = self._mean_t.to(device=acts.device, dtype=acts.dtype)
        return (acts - mean) / self.std

    def n_batches(self, batch_size: int, epochs: int = 1, drop_last: bool = True) -> int:
        """Number of batches :meth:`token_sampler` yields."""
        per_epoch = self.n_tokens // batch_size if drop_last else -(-self.n_tokens // batch_size)
        return per_epoch * epochs

    def chunks(self) -> list[Chunk]:
        """Contiguous image ranges the sampler shuffles and reads, each in one read."""
        out: list[Chunk] = []
        for ci, c in enumerate(self.caches):
            per_chunk = max(1, CHUNK_TOKENS // max(1, c.tokens_per_image))
            for k, info in enumerate(c.manifest.shards):
                out.extend((ci, k, r, min(info.n_images, r + per_chunk))
                           for r in range(0, info.n_images, per_chunk))
        return out

    def _chunk_tokens(self, ch: Chunk) -> int:
        return (ch[3] - ch[2]) * self.caches[ch[0]].tokens_per_image

    def plan(self, batch_size: int, seed: int, epochs: int, start_step: int, drop_last: bool,
             buffer_tokens: int) -> Iterator[_Window | int]:
        """The deterministic reading plan: windows, and an int (the tail step) where ``drop_last`` is off."""
        chunks = self.chunks()
        per_epoch = self.n_batches(batch_size, 1, drop_last)
        step = 0
        for epoch in range(epochs):
            if step + per_epoch <= start_step:
                step += per_epoch
                continue
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(chunks))
            n_carry, pos, new_epoch = 0, 0, True
            while pos < len(order):
                window: list[Chunk] = []
                n_win = 0
                while pos < len(order) and (not window or n_win < buffer_tokens):
                    window.append(chunks[order[pos]])
                    n_win += self._chunk_tokens(window[-1])
                    pos += 1
                n_avail = n_carry + n_win
                perm = rng.permutation(n_avail)
                n_full = n_avail // batch_size
                yield _Window(window, perm, n_full, step, step + n_full <= start_step, new_epoch)
                new_epoch = False
                step += n_full
                n_carry = n_avail - n_full * batch_size
            if not drop_last and n_carry:
                yield step
                step += 1

    def token_sampler(self, batch_size: int, seed: int = 42, normalize: bool = True, epochs: int = 1,
                      start_step: int = 0, drop_last: bool = True, buffer_tokens: int | None = None,
                      prefetch: bool = True, half: bool = False) -> Iterator[torch.Tensor]:
        """Shuffled patch-token batches ``[batch_size, D]`` float32 over every cache, bounded memory.

        With ``drop_last`` the final partial batch of each epoch is dropped. Deterministic for a seed;
        ``start_step`` skips that many batches (resume after a kill) without reading the skipped data.
        ``prefetch`` reads the next buffer in a background thread with large sequential reads;
        ``prefetch=False`` is the reference path (memory-mapped slices), which yields the same batches.
        ``half`` yields the stored float16 tokens unnormalized (a GPU normalizes them faster than the CPU:
        see :meth:`finish_on`).
        """
        if batch_size < 1:
            raise CacheError(f"batch_size must be ≥ 1, got {batch_size}")
        buf_tokens = max(buffer_tokens or DEFAULT_BUFFER_TOKENS, 2 * batch_size)
        plan = self.plan(batch_size, seed, epochs, start_step, drop_last, buf_tokens)
        loader = self._load_fast if prefetch else self._load_mmap
        run = _prefetched if prefetch else _sequential
        buffers = run(plan, batch_size, self.d_model, loader, self._gather)
        try:
            for item, buf in buffers:
                if isinstance(item, int):
                    if item >= start_step:
                        yield self._to_torch(buf, normalize, half)
                    continue
                for b in range(item.n_full):
                    if item.first_step + b >= start_step:
                        yield self._to_torch(buf[item.perm[b * batch_size:(b + 1) * batch_size]],
                                             normalize, half)
        finally:
            buffers.close()  # type: ignore[attr-defined]

    def _to_torch(self, arr: np.ndarray, normalize: bool, half: bool = False) -> torch.Tensor:
        """The batch as float32 (normalized), or as the stored float16 when ``half`` (no copy beyond the
        gather)."""
        src = torch.from_numpy(arr)
        if half:
            return src
        t = src.float()
        if normalize:
            t.sub_(self._mean_t).div_(self.std)
        # any NaN/Inf makes the sum NaN/Inf; fp16 values cannot overflow it
        if not bool(torch.isfinite(t.sum())):
            raise CacheError(f"{', '.join(self.paths)}: the cache holds NaN/Inf activations (visae's writer "
                             "never stores them: the files were altered or written by another tool); run "
                             "open_cache(path, verify=True), delete bad shards and rerun 'visae cache'")
        return t

    def finish_on(self, batches: Iterator[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
        """``half`` batches → normalized float32 on ``device`` (the same values as the CPU path)."""
        mean = self._mean_t.to(device)
        for b in batches:
            t = b.to(device, non_blocking=True).float().sub_(mean).div_(self.std)
            if not bool(torch.isfinite(t.sum())):
                raise CacheError(f"{', '.join(self.paths)}: the cache holds NaN/Inf activations; run "
                                 "open_cache(path, verify=True), delete bad shards and rerun 'visae cache'")
            yield t

    def _load_mmap(self, carry: np.ndarray, window: list[Chunk]) -> np.ndarray:
        """Reference path: ``carry ++ window`` from memory-mapped slices."""
        d = self.d_model
        return np.concatenate([carry,
                               *(self.caches[ci].shard(k)[r0:r1].reshape(-1, d) for ci, k, r0, r1 in window)])

    def _load_fast(self, carry: np.ndarray, window: list[Chunk]) -> np.ndarray:
        """Fast path: ``carry ++ window`` with one sequential ``preadv`` per chunk into one buffer."""
        n = len(carry) + sum(self._chunk_tokens(ch) for ch in window)
        buf = np.empty((n, self.d_model), dtype=np.float16)
        buf[:len(carry)] = carry
        pos = len(carry)
        for ch in window:
            m = self._chunk_tokens(ch)
            self.caches[ch[0]].read_rows_into(ch[1], ch[2], ch[3], buf[pos:pos + m])
            pos += m
        return buf

    def _gather(self, carry: np.ndarray, window: list[Chunk], idx: np.ndarray) -> np.ndarray:
        """Tokens ``idx`` of the virtual buffer ``carry ++ window`` without reading the whole window."""
        out = np.empty((len(idx), self.d_model), dtype=np.float16)
        in_carry = idx < len(carry)
        out[in_carry] = carry[idx[in_carry]]
        starts = np.cumsum([0] + [self._chunk_tokens(ch) for ch in window]) + len(carry)
        for j, (ci, k, r0, _r1) in enumerate(window):
            sel = np.nonzero((idx >= starts[j]) & (idx < starts[j + 1]))[0]
            if len(sel):
                t = self.caches[ci].tokens_per_image
                local = idx[sel] - starts[j]
                out[sel] = self.caches[ci].shard(k)[r0 + local // t, local % t]
        return out


Loader = Callable[[np.ndarray, list[Chunk]], np.ndarray]
Gather = Callable[[np.ndarray, list[Chunk], np.ndarray], np.ndarray]


def _sequential(plan: Iterator[_Window | int], batch_size: int, d_model: int, load: Loader,
                gather: Gather) -> Iterator[tuple[_Window | int, np.ndarray]]:
    """Execute the plan: ``(window, buffer)`` for each window to yield from, ``(step, carry)`` for a tail."""
    carry = np.empty((0, d_model), dtype=np.float16)
    for item in plan:
        if isinstance(item, int):
            yield item, carry
            continue
        if item.new_epoch:
            carry = np.empty((0, d_model), dtype=np.float16)
        rest = item.perm[item.n_full * batch_size:]
        if item.skip:
            carry = gather(carry, item.chunks, rest)
            continue
        buf = load(carry, item.chunks)
        carry = buf[rest]
        yield item, buf


def _prefetched(plan: Iterator[_Window | int], batch_size: int, d_model: int, load: Loader,
                gather: Gather) -> Iterator[tuple[_Window | int, np.ndarray]]:
    """:func:`_sequential` run one buffer ahead in a background thread, so reads overlap training.

    At most two buffers exist at once: the one being consumed and the one being read.
    """
    q: queue.Queue[Any] = queue.Queue()
    slots = threading.Semaphore(2)
    stop = threading.Event()
    done = object()

    def limited(carry: np.ndarray, window: list[Chunk]) -> np.ndarray:
        while not slots.acquire(timeout=0.1):
            if stop.is_set():
                raise _Stopped
        return load(carry, window)

    def produce() -> None:
        try:
            for pair in _sequential(plan, batch_size, d_model, limited, gather):
                q.put(pair)
                if stop.is_set():
                    return
            q.put(done)
        except _Stopped:
            return
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=produce, name="visae-token-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
            if isinstance(got[0], _Window):
                slots.release()  # the consumer is done with this buffer
    finally:
        stop.set()
        thread.join()


class _Stopped(Exception):
    """The consumer closed the stream; the reader thread ends."""
