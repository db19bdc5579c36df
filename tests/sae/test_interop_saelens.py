"""SAELens checkpoints written by sae-lens's own ``save_model``/``save_inference_model`` load in visae with
the codes and reconstructions of sae-lens's own ``SAE.load_from_disk`` model (within 1e-5), or are refused
with one line naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sae_lens
import torch
from sae_lens import SAE

from visae.errors import CheckpointError
from visae.sae.checkpoint import load_sae

D, F, K = 8, 32, 4


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.startswith("W") else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if hasattr(model, "threshold") and isinstance(model.threshold, torch.Tensor):
            model.threshold.copy_(torch.rand(model.threshold.shape, generator=g) * 0.6 - 0.1)


def _inputs() -> torch.Tensor:
    return torch.randn(40, D, generator=torch.Generator().manual_seed(7)) * 1.5 + 0.2


def _compare(folder: Path, family: str) -> None:
    ref = SAE.load_from_disk(str(folder)).eval()
    sae = load_sae(folder)
    assert sae.family == family
    x = _inputs()
    with torch.no_grad():
        codes = ref.encode(x)
        recon = ref.decode(codes)
        out = sae(x)
    assert int((codes > 0).sum()) > 0
    torch.testing.assert_close(out.codes_nf, codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_nd, recon, atol=1e-5, rtol=1e-5)


def _save(model: Any, folder: Path, inference: bool = False) -> Path:
    (model.save_inference_model if inference else model.save_model)(str(folder))
    return folder


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_standard(apply_b_dec: bool, tmp_path: Path) -> None:
    cfg = sae_lens.StandardSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=apply_b_dec)
    model = sae_lens.StandardSAE(cfg)
    _randomize(model)
    _compare(_save(model, tmp_path / "s"), "relu")


@pytest.mark.parametrize("rescale", [False, True])
def test_topk(rescale: bool, tmp_path: Path) -> None:
    cfg = sae_lens.TopKSAEConfig(d_in=D, d_sae=F, k=K, rescale_acts_by_decoder_norm=rescale)
    model = sae_lens.TopKSAE(cfg)
    _randomize(model)
    _compare(_save(model, tmp_path / "s"), "topk")


def test_jumprelu_with_negative_thresholds(tmp_path: Path) -> None:
    model = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F))
    _randomize(model)
    assert float(model.threshold.min()) < 0  # sae-lens applies ReLU first: a negative threshold acts as 0
    _compare(_save(model, tmp_path / "s"), "jumprelu")


def test_batchtopk_training_sae_saved_for_inference(tmp_path: Path) -> None:
    """BatchTopK is written by sae-lens as a JumpReLU at its learned threshold."""
    model = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K))
    _randomize(model)
    model.topk_threshold = torch.tensor(0.35)
    folder = _save(model, tmp_path / "s", inference=True)
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"
    _compare(folder, "jumprelu")


def test_matryoshka_batchtopk_training_sae_saved_for_inference(tmp_path: Path) -> None:
    cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=[8, 16, F])
    model = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    _randomize(model)
    model.topk_threshold = torch.tensor(0.35)
    _compare(_save(model, tmp_path / "s", inference=True), "jumprelu")


def test_expected_average_only_in_is_identity_at_inference(tmp_path: Path) -> None:
    model = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F,
                                                            normalize_activations="expected_average_only_in"))
    _randomize(model)
    _compare(_save(model, tmp_path / "s"), "relu")


@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale", "covariance_whitening"])
def test_per_token_normalization_is_refused(mode: str, tmp_path: Path) -> None:
    model = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F))
    _randomize(model)
    folder = _save(model, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["normalize_activations"] = mode
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"cfg\.json: field 'normalize_activations' = '{mode}'"):
        load_sae(folder)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_gated(apply_b_dec: bool, tmp_path: Path) -> None:
    """b_gate → b_enc, r_mag and b_mag copied; without the input b_dec both paths' biases absorb it."""
    model = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=apply_b_dec))
    _randomize(model)
    folder = _save(model, tmp_path / "s")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "gated"
    _compare(folder, "gated")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "sae_weights.safetensors"))
    del state["b_mag"]
    save_file(state, str(folder / "sae_weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: missing tensor 'b_mag'"):
        load_sae(folder)


def test_gated_training_sae_saved_for_inference(tmp_path: Path) -> None:
    cfg = sae_lens.GatedTrainingSAEConfig(d_in=D, d_sae=F, l1_coefficient=3.0)
    model = sae_lens.GatedTrainingSAE(cfg)
    _randomize(model)
    _compare(_save(model, tmp_path / "s", inference=True), "gated")
    _compare(_save(model, tmp_path / "t"), "gated")


@pytest.mark.parametrize("arch", ["abstopk", "transcoder", "matching_pursuit"])
def test_other_architectures_are_refused(arch: str, tmp_path: Path) -> None:
    model = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F))
    folder = _save(model, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = arch
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"cfg\.json: field 'architecture' = '{arch}'"):
        load_sae(folder)


def test_batchtopk_training_save_equals_its_inference_save(tmp_path: Path) -> None:
    """A training ``save_model`` of BatchTopK (sae-lens cannot load it for inference itself) loads as
    BatchTopK at its threshold, with the outputs of sae-lens's own inference save of the same model."""
    model = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K))
    _randomize(model)
    model.topk_threshold = torch.tensor(0.35)
    _save(model, tmp_path / "train")
    _save(model, tmp_path / "inference", inference=True)
    ref = SAE.load_from_disk(str(tmp_path / "inference")).eval()
    sae = load_sae(tmp_path / "train")
    assert sae.family == "batchtopk" and sae.k == K
    x = _inputs()
    with torch.no_grad():
        codes = ref.encode(x)
        out = sae(x)
        torch.testing.assert_close(out.codes_nf, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.recon_nd, ref.decode(codes), atol=1e-5, rtol=1e-5)


def test_matryoshka_training_save_equals_its_inference_save(tmp_path: Path) -> None:
    """A training ``save_model`` of Matryoshka-BatchTopK loads as visae's Matryoshka (widths and threshold
    kept), with the outputs of sae-lens's own inference save; each prefix decodes from its own features."""
    cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=[8, 16, F])
    model = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    _randomize(model)
    model.topk_threshold = torch.tensor(0.35)
    _save(model, tmp_path / "train")
    _save(model, tmp_path / "inference", inference=True)
    assert json.loads((tmp_path / "train" / "cfg.json").read_text())["architecture"] == "matryoshka_batchtopk"
    ref = SAE.load_from_disk(str(tmp_path / "inference")).eval()
    sae = load_sae(tmp_path / "train")
    assert sae.family == "matryoshka" and sae.k == K and sae.widths == [8, 16, F]  # type: ignore[attr-defined]
    x = _inputs()
    with torch.no_grad():
        codes = ref.encode(x)
        out = sae(x)
        torch.testing.assert_close(out.codes_nf, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.recon_nd, ref.decode(codes), atol=1e-5, rtol=1e-5)
        sub = sae.with_options(prefix=8)(x)
        want = codes[:, :8] @ ref.W_dec[:8] + ref.b_dec
        torch.testing.assert_close(sub.recon_nd, want, atol=1e-5, rtol=1e-5)
