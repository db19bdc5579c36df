"""PCA / ZCA whitening of standardized activations, fitted on a training cache and stored beside it.

The paper standardizes activations (subtract the cached mean, divide by the scalar std) and leaves
whitening "as a follow-up ablation" (App. C). Here, with the covariance C = U Λ Uᵀ of the standardized
training tokens (rows ``x``; eigenvalues floored at ``eps · λ_max``):

- PCA: ``x_w = (x − μ) U Λ^{-1/2}``, unwhitened by ``x = x_w Λ^{1/2} Uᵀ + μ``;
- ZCA: ``x_w = (x − μ) U Λ^{-1/2} Uᵀ``, unwhitened by ``x = x_w U Λ^{1/2} Uᵀ + μ``.

μ is the tokens' mean after standardization (≈ 0). An SAE trained on whitened tokens is folded back into
the standardized space when it is saved (:func:`fold_into_sae`: ``W_enc ← W·W_enc``, ``W_dec ← W_dec·W⁻¹``,
biases likewise), so its codes are unchanged and its reconstructions come out unwhitened: M2 and M3 stay
comparable with unwhitened SAEs, and every later stage reads it as any other SAE.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from visae.errors import ConfigError
from visae.io import atomic_write_with

if TYPE_CHECKING:
    from visae.cache.sampler import TokenStream
    from visae.sae.base import SAE

WhitenKind = Literal["none", "pca", "zca"]
KINDS: tuple[str, ...] = ("none", "pca", "zca")
EPS = 1e-6
"""Eigenvalues below ``EPS · λ_max`` are raised to it (near-singular directions are not blown up)."""


@dataclass(frozen=True)
class Whitening:
    """A fitted whitening of standardized activations: ``x_w = (x − mean_d) @ w_dd``."""

    kind: str
    mean_d: np.ndarray
    w_dd: np.ndarray
    """Whitening matrix (float64 [D, D])."""
    w_inv_dd: np.ndarray
    """Its inverse (unwhitening)."""
    eigenvalues_d: np.ndarray
    n_tokens: int

    def apply(self, x_nd: torch.Tensor) -> torch.Tensor:
        """Whiten standardized activations (same dtype and device as the input)."""
        mean = torch.as_tensor(self.mean_d, dtype=x_nd.dtype, device=x_nd.device)
        w = torch.as_tensor(self.w_dd, dtype=x_nd.dtype, device=x_nd.device)
        return (x_nd - mean) @ w

    def invert(self, x_w_nd: torch.Tensor) -> torch.Tensor:
        """Unwhiten: whitened activations (or reconstructions) back to the standardized space."""
        mean = torch.as_tensor(self.mean_d, dtype=x_w_nd.dtype, device=x_w_nd.device)
        w_inv = torch.as_tensor(self.w_inv_dd, dtype=x_w_nd.dtype, device=x_w_nd.device)
        return x_w_nd @ w_inv + mean

    def save(self, path: Path) -> None:
        """Write as ``.npz`` atomically."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, kind=np.array(self.kind), mean_d=self.mean_d, w_dd=self.w_dd,
                         w_inv_dd=self.w_inv_dd, eigenvalues_d=self.eigenvalues_d,
                         n_tokens=np.array(self.n_tokens))
        atomic_write_with(path, write)

    @classmethod
    def load(cls, path: Path) -> Whitening:
        """Read a whitening written by :meth:`save`."""
        with np.load(path) as z:
            return cls(kind=str(z["kind"]), mean_d=z["mean_d"], w_dd=z["w_dd"], w_inv_dd=z["w_inv_dd"],
                       eigenvalues_d=z["eigenvalues_d"], n_tokens=int(z["n_tokens"]))


def whitening_from_covariance(kind: str, mean_d: np.ndarray, cov_dd: np.ndarray, n_tokens: int,
                              eps: float = EPS) -> Whitening:
    """PCA or ZCA whitening of a covariance (see the module docstring)."""
    if kind not in ("pca", "zca"):
        raise ConfigError(f"whiten: expected one of {', '.join(KINDS)}, got {kind!r}")
    lam, u = np.linalg.eigh(np.asarray(cov_dd, dtype=np.float64))
    lam = np.maximum(lam, eps * max(float(lam.max()), 1e-300))
    order = np.argsort(lam)[::-1]  # PCA components by decreasing variance
    lam, u = lam[order], u[:, order]
    w = u / np.sqrt(lam)
    w_inv = (u * np.sqrt(lam)).T
    if kind == "zca":
        w, w_inv = w @ u.T, u @ w_inv
    return Whitening(kind, np.asarray(mean_d, dtype=np.float64), w, w_inv, lam, int(n_tokens))


def fit_whitening(stream: TokenStream, kind: str, batch_size: int = 8192,
                  max_tokens: int | None = 2_000_000) -> Whitening:
    """Fit on the standardized tokens of a training stream (one pass, at most ``max_tokens``), float64."""
    d = stream.d_model
    s1 = np.zeros(d)
    s2 = np.zeros((d, d))
    n = 0
    it = stream.token_sampler(batch_size, seed=0, normalize=True, epochs=1, drop_last=False)
    try:
        for batch in it:
            x = batch.double().numpy()
            s1 += x.sum(axis=0)
            s2 += x.T @ x
            n += len(x)
            if max_tokens is not None and n >= max_tokens:
                break
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            close()
    if n < 2:
        raise ConfigError("whiten: the training cache holds fewer than 2 tokens; cannot fit a covariance")
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
    return whitening_from_covariance(kind, mean, cov, n)


def whitening_path(stream: TokenStream, kind: str) -> Path:
    """Where a stream's whitening is stored: ``<first cache>/whitening-<kind>-<hash of the caches>.npz``."""
    key = hashlib.sha256(json.dumps(stream.hashes).encode()).hexdigest()[:12]
    return Path(stream.paths[0]) / f"whitening-{kind}-{key}.npz"


def whitening_for(stream: TokenStream, kind: str) -> Whitening | None:
    """The stored whitening of a training stream, fitted and stored on first use; None for ``none``."""
    if kind == "none":
        return None
    path = whitening_path(stream, kind)
    if path.is_file():
        return Whitening.load(path)
    fitted = fit_whitening(stream, kind)
    fitted.save(path)
    return fitted


@torch.no_grad()
def fold_into_sae(sae: SAE, whitening: Whitening) -> None:
    """Rewrite an SAE trained on whitened inputs to take standardized inputs and return standardized
    reconstructions, with identical codes: ``W_enc ← W·W_enc``, ``b_dec ← b_dec·W⁻¹ + μ``,
    ``b_enc ← b_enc`` and ``W_dec ← W_dec·W⁻¹``."""
    dtype, device = sae.W_enc.dtype, sae.W_enc.device
    w = torch.as_tensor(whitening.w_dd, dtype=torch.float64, device=device)
    w_inv = torch.as_tensor(whitening.w_inv_dd, dtype=torch.float64, device=device)
    mean = torch.as_tensor(whitening.mean_d, dtype=torch.float64, device=device)
    # (x − μ)W − b = (x − (b W⁻¹ + μ)) W, so the pre-activations are unchanged
    sae.W_enc.copy_((w @ sae.W_enc.double()).to(dtype))
    sae.W_dec.copy_((sae.W_dec.double() @ w_inv).to(dtype))
    sae.b_dec.copy_((sae.b_dec.double() @ w_inv + mean).to(dtype))


# --- whitening before a probe (m3.whiten, m6.whiten, the classification and segmentation tasks' whiten) ---

PROBE_WHITEN_HELP = ("whiten the probe's activation inputs (raw and reconstructed features), fitted on "
                     "the raw features of the probe's training split (App. C ablation; the paper: none)")


def whitening_of_rows(kind: str, x_nd: np.ndarray) -> Whitening:
    """PCA or ZCA whitening fitted on the rows of ``x_nd`` (a probe's raw training features), float64."""
    fit = np.asarray(x_nd, dtype=np.float64)
    if len(fit) < 2:
        raise ConfigError(f"whiten: {kind} needs at least 2 training rows to fit a covariance, got "
                          f"{len(fit)}")
    d = fit.shape[1]
    cov = np.cov(fit, rowvar=False).reshape(d, d)
    return whitening_from_covariance(kind, fit.mean(axis=0), cov, len(fit))


def whiten_rows(whitening: Whitening, x_nd: np.ndarray) -> np.ndarray:
    """``(x − μ) W`` for a NumPy array, in float32 when the input is float32 (else float64)."""
    out = (np.asarray(x_nd, dtype=np.float64) - whitening.mean_d) @ whitening.w_dd
    return out.astype(np.float32) if np.asarray(x_nd).dtype == np.float32 else out


def refuse_probe_whiten(owner: str, value: str, reason: str) -> str:
    """Validator body of a ``whiten`` field where whitening before the probe does not apply: ``none``
    passes, anything else is a ValueError that says why and what to do."""
    if value != "none":
        raise ValueError(f"does not apply to {owner}: {reason}; whitening before the probe "
                         "applies to probes on activations (m3.whiten, m6.whiten, the classification and "
                         "segmentation tasks' whiten); remove it or set whiten: none")
    return value
