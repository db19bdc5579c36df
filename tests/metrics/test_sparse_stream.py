"""The sparse evaluation stream equals the dense reference: encode, decode, pooling, M1 on active maps, M2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visae.metrics.m1_spatial as m1mod
from visae.metrics.encode import EncodedBatch, dense_to_sparse, inference_rule, sparse_encode
from visae.metrics.m1_spatial import M1Accumulator, M1Config
from visae.metrics.m2_reconstruction import M2Accumulator, M2Config
from visae.sae.batchtopk import BatchTopKSAE
from visae.sae.jumprelu import JumpReLUSAE
from visae.sae.relu import ReLUSAE
from visae.sae.sparse import sparse_decode
from visae.sae.testing import ReluSAE
from visae.sae.topk import TopKSAE


def _sae(family: str) -> torch.nn.Module:
    torch.manual_seed(1)
    d, f = 12, 40
    sae = {"batchtopk": BatchTopKSAE, "batchtopk-uncal": BatchTopKSAE, "jumprelu": JumpReLUSAE,
           "relu": ReLUSAE,
           "topk": TopKSAE, "generic": ReluSAE}[family](d, f, k=5).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        if family == "batchtopk":
            sae.threshold.fill_(0.9)
        if family == "jumprelu":
            sae.threshold.copy_(torch.linspace(-0.2, 1.5, f, dtype=torch.float64))  # some below 0
    return sae.eval()


@pytest.mark.parametrize("family", ["batchtopk", "batchtopk-uncal", "jumprelu", "relu", "topk", "generic"])
def test_sparse_encode_and_decode_equal_the_dense_model(family: str) -> None:
    sae = _sae(family)
    x = torch.randn(203, 12, dtype=torch.float64)
    assert (inference_rule(sae) is None) == (family == "generic")
    with torch.no_grad():
        dense = sae.encode(x)
        codes = sparse_encode(sae, x, chunk_rows=37)  # several chunks and a ragged last one
        torch.testing.assert_close(codes.to_dense(), dense, rtol=1e-12, atol=1e-12)
        assert torch.all(codes.rows_n[1:] >= codes.rows_n[:-1])
        torch.testing.assert_close(sparse_decode(codes, sae.W_dec, sae.b_dec), sae.decode(dense),
                                   rtol=1e-10, atol=1e-10)


def _codes(seed: int, n: int, p: int, f: int, negative: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand(n, p, f, generator=g, dtype=torch.float64) + 0.05
    if negative:
        vals = vals - 0.6 * (torch.rand(n, p, f, generator=g, dtype=torch.float64) < 0.3)
    active = torch.rand(n, p, f, generator=g) < torch.linspace(0.02, 0.9, f)
    codes = torch.where(active, vals, torch.zeros_like(vals))
    codes[:, :, 3] = 0.7  # a feature active on every patch, constant (variance 0)
    codes[0, :, 4] = -0.2  # negative on every patch of one image
    return codes


def _batch(codes_npf: torch.Tensor, grid: tuple[int, int], sparse: bool) -> EncodedBatch:
    n, p, _ = codes_npf.shape
    acts = torch.zeros(n, p, 2, dtype=codes_npf.dtype)
    if sparse:
        return EncodedBatch(np.arange(n), np.zeros(n, np.int64), acts, None, acts, grid,
                            codes=dense_to_sparse(codes_npf.reshape(n * p, -1)))
    return EncodedBatch(np.arange(n), np.zeros(n, np.int64), acts, codes_npf, acts, grid)


@pytest.mark.parametrize("negative", [False, True])
def test_pooled_sparse_codes_equal_the_dense_max(negative: bool) -> None:
    codes = _codes(2, 9, 12, 30, negative)
    batch = _batch(codes, (3, 4), sparse=True)
    torch.testing.assert_close(batch.pooled_codes().to_dense(), codes.amax(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(batch.codes_npf, codes, rtol=0, atol=0)


@pytest.mark.parametrize("maps_per_chunk", [65536, 7])
def test_m1_on_active_maps_equals_the_dense_gather(monkeypatch, maps_per_chunk: int) -> None:
    monkeypatch.setattr(m1mod, "MAPS_PER_CHUNK", maps_per_chunk)
    cfg = M1Config(min_active_patches=3)
    ref, fast = M1Accumulator(30, cfg, torch.device("cpu")), M1Accumulator(30, cfg, torch.device("cpu"))
    for s in range(3):
        codes = _codes(10 + s, 8, 20, 30, negative=True)
        ref.update(codes, (4, 5))
        fast.update_batch(_batch(codes, (4, 5), sparse=True))
    (mr, cr), (mf, cf) = ref.feature_means(), fast.feature_means()
    np.testing.assert_array_equal(cf, cr)
    assert cr.sum() > 100 and (cr == 0).any()
    np.testing.assert_allclose(mf, mr, rtol=1e-6, atol=1e-7)
    assert fast.n_images == ref.n_images == 24


def test_m2_from_sparse_codes_equals_dense() -> None:
    torch.manual_seed(3)
    acts = torch.randn(6, 10, 4)
    recon = acts + 0.1 * torch.randn(6, 10, 4)
    codes = _codes(4, 6, 10, 30, negative=True).float()
    codes[:, :, 7] = 0.0  # never active
    cfg = M2Config()
    dense, sparse = M2Accumulator(4, 30, cfg,
                                  torch.device("cpu")), M2Accumulator(4, 30, cfg, torch.device("cpu"))
    dense.update(acts, recon, codes)
    sparse.update(acts, recon, dense_to_sparse(codes.reshape(60, 30)))
    a, b = dense.result(), sparse.result()
    assert a == b
    ref_dead = int((codes.reshape(60, 30).amax(0) <= 0).sum())
    assert a.dead == ref_dead and ref_dead >= 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["batchtopk", "jumprelu", "topk"])
def test_sparse_stream_kernels_on_cuda_match_cpu(family: str) -> None:
    sae = _sae(family)
    x = torch.randn(3 * 20, 12, dtype=torch.float64)
    with torch.no_grad():
        cpu = sparse_encode(sae, x, chunk_rows=37)
        gpu = sparse_encode(sae.cuda(), x.cuda(), chunk_rows=37)
        torch.testing.assert_close(gpu.to_dense().cpu(), cpu.to_dense())
        torch.testing.assert_close(sparse_decode(gpu, sae.W_dec, sae.b_dec).cpu(),
                                   sparse_decode(cpu, sae.W_dec.cpu(), sae.b_dec.cpu()))
    codes = _codes(7, 3, 20, 40, negative=True)
    acc_cpu, acc_gpu = (M1Accumulator(40, M1Config(min_active_patches=3), torch.device(d))
                        for d in ("cpu", "cuda"))
    acc_cpu.update_batch(_batch(codes, (4, 5), sparse=True))
    acc_gpu.update_batch(_batch(codes.cuda(), (4, 5), sparse=True))
    np.testing.assert_allclose(acc_gpu.feature_means()[0], acc_cpu.feature_means()[0], rtol=1e-6)
    torch.testing.assert_close(_batch(codes.cuda(), (4, 5), sparse=True).pooled_codes().to_dense().cpu(),
                               codes.amax(dim=1))
