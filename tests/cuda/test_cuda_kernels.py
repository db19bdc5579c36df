"""Every compute kernel on CUDA against its CPU result (``pytest -m cuda``; skipped without a GPU).

``VISAE_CUDA_TEST_DEVICE=cpu pytest -m cuda`` runs the same comparisons CPU-against-CPU: the check that
these tests themselves work on a machine without a GPU (benchmarks/gpu.sh's CPU rehearsal does this).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("VISAE_CUDA_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="no CUDA device (set VISAE_CUDA_TEST_DEVICE=cpu to rehearse on "
                                        "the CPU)")]
DEV = torch.device(DEVICE)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """No TF32: CUDA fp32 matmuls must match the CPU's to float32 rounding."""
    if torch.cuda.is_available():
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.detach().cpu().float(), b.detach().cpu().float(), rtol=rtol, atol=atol)


def _sae(family: str, d: int = 48, f: int = 192, k: int = 8):
    from visae.sae.registry import make_sae

    torch.manual_seed(0)
    return make_sae(family, d, d_sae=f, k=None if family == "relu" else k)


@pytest.mark.parametrize("family", ["batchtopk", "topk", "jumprelu", "relu"])
def test_training_step_and_gradients(family):
    x = torch.randn(256, 48, generator=torch.Generator().manual_seed(1))
    cpu, gpu = _sae(family), _sae(family).to(DEV)
    r_cpu = cpu.training_step(x, torch.float32)
    r_gpu = gpu.training_step(x.to(DEV), torch.float32)
    assert r_cpu.loss == pytest.approx(r_gpu.loss, rel=1e-4)
    assert r_cpu.l0 == pytest.approx(r_gpu.l0, rel=1e-3)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        if p.grad is not None:
            _close(p.grad, q.grad, rtol=1e-3, atol=1e-5)
        assert p.grad is None or q.grad is not None, name


def test_bf16_training_step_tracks_fp32():
    x = torch.randn(512, 48, generator=torch.Generator().manual_seed(2))
    ref, half = _sae("batchtopk"), _sae("batchtopk").to(DEV)
    assert ref.training_step(x, torch.float32).loss == pytest.approx(
        half.training_step(x.to(DEV), torch.bfloat16).loss, rel=3e-2)


def test_sparse_selection_and_decode():
    from visae.sae.sparse import select_batch_topk, select_topk, sparse_decode

    g = torch.Generator().manual_seed(3)
    pre = torch.randn(300, 500, generator=g)
    w, b = torch.randn(500, 40, generator=g), torch.randn(40, generator=g)
    for select in (select_batch_topk, select_topk):
        c_cpu, c_gpu = select(pre, 7), select(pre.to(DEV), 7)
        _close(c_cpu.to_dense(), c_gpu.to_dense(), rtol=0, atol=0)
        _close(sparse_decode(c_cpu, w, b), sparse_decode(c_gpu, w.to(DEV), b.to(DEV)))


@pytest.mark.parametrize("family", ["batchtopk", "topk", "jumprelu", "relu"])
def test_inference_encode_and_decode(family):
    from visae.metrics.encode import sparse_encode

    x = torch.randn(400, 48, generator=torch.Generator().manual_seed(4))
    cpu, gpu = _sae(family).eval(), _sae(family).to(DEV).eval()
    with torch.no_grad():
        _close(cpu.encode(x), gpu.encode(x.to(DEV)))
        _close(sparse_encode(cpu, x).to_dense(), sparse_encode(gpu, x.to(DEV)).to_dense())
        _close(cpu(x).recon_nd, gpu(x.to(DEV)).recon_nd)


def test_morans_i():
    from visae.metrics.m1_spatial import morans_i

    maps = torch.rand(64, 14, 14, generator=torch.Generator().manual_seed(5))
    _close(morans_i(maps), morans_i(maps.to(DEV)), rtol=1e-4, atol=1e-5)


def test_torch_probe_engine():
    from visae.metrics.probes import ProbeConfig, fit_probe, newton_binary

    rng = np.random.default_rng(6)
    y = rng.integers(0, 5, 400)
    x = (rng.normal(size=(400, 16)) + np.eye(5, 16)[y] * 2).astype(np.float32)
    a = fit_probe(x, y, ProbeConfig(engine="torch", device="cpu", max_iter=200))
    b = fit_probe(x, y, ProbeConfig(engine="torch", device=DEVICE, max_iter=200))
    assert a.accuracy(x, y) == pytest.approx(b.accuracy(x, y), abs=0.01)
    np.testing.assert_allclose(a.predict_proba(x), b.predict_proba(x), atol=2e-3)
    xb = torch.from_numpy(x)[None].repeat(3, 1, 1)
    yb = torch.from_numpy((y[None] == np.arange(3)[:, None]).astype(np.float32))
    w1, b1, _, _ = newton_binary(xb, yb)
    w2, b2, _, _ = newton_binary(xb.to(DEV), yb.to(DEV))
    _close(w1, w2, rtol=1e-3, atol=1e-4)
    _close(b1, b2, rtol=1e-3, atol=1e-4)


def test_streaming_stats_and_sampler_finish(tmp_path):
    from visae.backbones.layout import TokenLayout
    from visae.cache.reader import open_cache
    from visae.cache.stats import StreamingStats
    from visae.cache.testing import write_synthetic_cache

    x = torch.randn(1000, 24, generator=torch.Generator().manual_seed(7)) * 3 + 1
    a, b = StreamingStats(24), StreamingStats(24)
    a.update(x)
    b.update(x.to(DEV))
    np.testing.assert_allclose(a.mean_d, b.mean_d, rtol=1e-10, atol=1e-12)
    assert a.std == pytest.approx(b.std, rel=1e-10)
    acts = x.numpy().reshape(40, 25, 24)[:, :16]
    c = open_cache(write_synthetic_cache(tmp_path / "c", acts, np.zeros(40, int), ["a"],
                                         TokenLayout(("cls",), 4, 4, 8)))
    from visae.cache.sampler import TokenStream

    s = TokenStream([c])
    cpu = list(s.token_sampler(64, seed=1))
    gpu = list(s.finish_on(s.token_sampler(64, seed=1, half=True), DEV))
    for p, q in zip(cpu, gpu, strict=True):
        _close(p, q, rtol=0, atol=0)


def test_backbone_forward_for_caching():
    from visae.cache.testing import TinyViTBackbone

    cpu, gpu = TinyViTBackbone(seed=0), TinyViTBackbone(seed=0, device=DEVICE)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    _close(cpu.block_outputs(pixels, [1])[1], gpu.block_outputs(pixels.to(DEV), [1])[1], rtol=1e-3, atol=1e-4)
