"""ViT-Prisma SAEs saved by ViT-Prisma's own ``save_config`` + ``save_model`` (its repository at aa5ff6a; the
PyPI release has no SAE code) load with ViT-Prisma's own codes and reconstructions (recorded by
``scripts/make_interop_fixtures.py``), or are refused; the pickled config object is never executed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visae.errors import CheckpointError
from visae.sae.checkpoint import load_sae
from visae.sae.formats import detect_format

FIXTURES = Path(__file__).parents[1] / "data" / "interop" / "vit_prisma"


@pytest.mark.parametrize("name,family", [("relu", "relu"), ("topk", "topk"), ("gated", "gated")])
def test_prisma_fixture(name: str, family: str) -> None:
    folder = FIXTURES / name
    fmt, target = detect_format(folder) or (None, None)
    assert fmt is not None and fmt.name == "vit_prisma" and target == folder / "n_images_100.pt"
    sae = load_sae(folder)
    assert sae.family == family
    want = load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        out = sae(want["x"])
    torch.testing.assert_close(out.codes_nf, want["codes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_nd, want["recon"], atol=1e-5, rtol=1e-5)


def test_prisma_layer_norm_and_other_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json: field 'normalize_activations' = 'layer_norm'"):
        load_sae(FIXTURES / "topk_layer_norm")
    cases = (("relu", "architecture", "jumprelu"), ("relu", "activation_fn_str", "tanh-relu"),
             ("relu", "is_transcoder", True), ("gated", "activation_fn_str", "topk"))
    for src, field, value in cases:
        shutil.copytree(FIXTURES / src, tmp_path / src / field)
        cfg = json.loads((tmp_path / src / field / "config.json").read_text())
        cfg[field] = value
        (tmp_path / src / field / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=rf"config\.json: field '{field}'"):
            load_sae(tmp_path / src / field)


def test_prisma_hub_layout_weights_only(tmp_path: Path) -> None:
    """``weights.pt`` (a bare state dict) + ``config.json``, as ViT-Prisma's hub repos hold them."""
    src = FIXTURES / "topk"
    (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
    state = load_sae(src).state_dict()
    torch.save({k: state[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, tmp_path / "weights.pt")
    want = load_file(str(src / "expected.safetensors"))
    torch.testing.assert_close(load_sae(tmp_path)(want["x"]).codes_nf.detach(), want["codes"], atol=1e-5,
                               rtol=1e-5)
