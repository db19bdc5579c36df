"""dictionary_learning and EleutherAI sparsify checkpoints written the way each library's own code writes
them load with that library's own outputs (within 1e-5), or are refused naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dictionary_learning import dictionary as dl
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
from dictionary_learning.trainers.top_k import AutoEncoderTopK

from visae.errors import CheckpointError
from visae.sae.checkpoint import load_sae

D, F, K = 8, 32, 4


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "bias" in name or "b_" in name else 0.5))


def _inputs() -> torch.Tensor:
    return torch.randn(40, D, generator=torch.Generator().manual_seed(7)) * 1.5 + 0.2


def _save_like_trainsae(model: torch.nn.Module, folder: Path, trainer: dict) -> Path:
    """What ``dictionary_learning.training.trainSAE`` writes: ``config.json`` then ``ae.pt``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}, indent=4))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / "ae.pt")
    return folder


def _compare(model: torch.nn.Module, folder: Path, family: str) -> None:
    sae = load_sae(folder)
    assert sae.family == family
    x = _inputs()
    with torch.no_grad():
        codes = model.encode(x)
        recon = model.decode(codes)
        out = sae(x)
    assert int((codes > 0).sum()) > 0
    torch.testing.assert_close(out.codes_nf, codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_nd, recon, atol=1e-5, rtol=1e-5)


def test_autoencoder(tmp_path: Path) -> None:
    model = dl.AutoEncoder(D, F)
    _randomize(model)
    _compare(model, _save_like_trainsae(model, tmp_path / "t", {"dict_class": "AutoEncoder"}), "relu")


def test_autoencoder_new(tmp_path: Path) -> None:
    model = dl.AutoEncoderNew(D, F)
    _randomize(model)
    _compare(model, _save_like_trainsae(model, tmp_path / "t", {"dict_class": "AutoEncoderNew"}), "relu")


def test_topk(tmp_path: Path) -> None:
    model = AutoEncoderTopK(D, F, K)
    _randomize(model)
    model.threshold.fill_(0.2)  # set by training, unused by its default encode
    folder = _save_like_trainsae(model, tmp_path / "t", {"dict_class": "AutoEncoderTopK", "k": K})
    _compare(model, folder, "topk")


@pytest.mark.parametrize("threshold", [0.4, -1.0])
def test_batchtopk_uses_its_threshold(threshold: float, tmp_path: Path) -> None:
    model = BatchTopKSAE(D, F, K)
    _randomize(model)
    model.threshold.fill_(threshold)  # −1: never set during training, its encode is then a plain ReLU
    folder = _save_like_trainsae(model, tmp_path / "t", {"dict_class": "BatchTopKSAE", "k": K})
    _compare(model, folder, "batchtopk")


def test_matryoshka_batchtopk(tmp_path: Path) -> None:
    model = MatryoshkaBatchTopKSAE(D, F, K, group_sizes=[8, 8, 16])
    _randomize(model)
    model.threshold.fill_(0.3)
    folder = _save_like_trainsae(model, tmp_path / "t", {"dict_class": "MatryoshkaBatchTopKSAE", "k": K})
    _compare(model, folder, "matryoshka")
    sae = load_sae(folder)
    assert sae.widths == [8, 16, 32]  # type: ignore[attr-defined]  # cumulative group_sizes
    # the prefix-16 dictionary decodes like dictionary_learning's first two groups
    x = _inputs()
    with torch.no_grad():
        codes = model.encode(x)
        want = codes[:, :16] @ model.W_dec[:16] + model.b_dec
        torch.testing.assert_close(sae.with_options(prefix=16)(x).recon_nd, want, atol=1e-5, rtol=1e-5)


def test_jumprelu(tmp_path: Path) -> None:
    model = dl.JumpReluAutoEncoder(D, F)
    _randomize(model)
    with torch.no_grad():
        model.threshold.copy_(torch.rand(F) * 0.6 - 0.1)
    folder = _save_like_trainsae(model, tmp_path / "t", {"dict_class": "JumpReluAutoEncoder"})
    _compare(model, folder, "jumprelu")


def test_gated_and_unknown(tmp_path: Path) -> None:
    model = dl.GatedAutoEncoder(D, F)
    _randomize(model)
    folder = _save_like_trainsae(model, tmp_path / "g", {"dict_class": "GatedAutoEncoder"})
    _compare(model, folder, "gated")  # gate_bias → b_enc, mag_bias → b_mag, r_mag
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"config\.json: missing, or without field trainer\.dict_class"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "CrossCoder"}}))
    with pytest.raises(CheckpointError, match=r"config\.json: field trainer\.dict_class = 'CrossCoder'"):
        load_sae(folder)


def test_sparsify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sparsify.sparse_coder
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.utils import eager_decode

    if not torch.cuda.is_available():  # sparsify picks its Triton decoder whenever triton imports
        monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", eager_decode)

    model = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K))
    _randomize(model)
    model.save_to_disk(tmp_path / "layers.3")
    ref = SparseCoder.load_from_disk(tmp_path / "layers.3")
    sae = load_sae(tmp_path / "layers.3")
    assert sae.family == "topk" and sae.k == K
    x = _inputs()
    with torch.no_grad():
        enc = ref.encode(x)
        codes = torch.zeros(len(x), F).scatter(1, enc.top_indices, enc.top_acts)
        recon = ref.decode(enc.top_acts, enc.top_indices)
        out = sae(x)
    torch.testing.assert_close(out.codes_nf, codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_nd, recon, atol=1e-5, rtol=1e-5)
    for field, value in (("activation", "groupmax"), ("skip_connection", True), ("transcode", True)):
        cfg = json.loads((tmp_path / "layers.3" / "cfg.json").read_text())
        cfg[field] = value
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
        weights = (tmp_path / "layers.3" / "sae.safetensors").read_bytes()
        (tmp_path / "bad" / "sae.safetensors").write_bytes(weights)
        with pytest.raises(CheckpointError, match=rf"cfg\.json: field '{field}'"):
            load_sae(tmp_path / "bad")


def test_ambiguous_folder_names_the_candidates(tmp_path: Path) -> None:
    model = dl.AutoEncoder(D, F)
    folder = _save_like_trainsae(model, tmp_path / "t", {"dict_class": "AutoEncoder"})
    (folder / "sae.pt").write_bytes(b'{"schema": 5}\n')
    with pytest.raises(CheckpointError, match=r"ambiguous checkpoint: it matches the formats "
                                              r"saev \(sae\.pt\), dictionary_learning \(ae\.pt\)"):
        load_sae(folder)
