"""saev checkpoints written by saev's own code load with saev's own outputs, or are refused.

Known answers: saev 0.1.0 (PyPI) live; schemas 1–5 from files that old saev versions' own ``dump`` wrote,
with those versions' own eval-mode forward outputs beside them (``scripts/make_interop_fixtures.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visae.errors import CheckpointError
from visae.sae.checkpoint import load_sae

FIXTURES = Path(__file__).parents[1] / "data" / "interop" / "saev"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
REFUSED = {
    "schema1_early_relu": "schema' = 1 with a non-zero b_dec",
    "schema1_early_topk": "schema' = 1 with a non-zero b_dec",
    "schema1_late_relu": "schema' = 1 with a non-zero b_dec",
    "schema1_late_topk": "schema' = 1 with a non-zero b_dec",
    "schema1_late_batchtopk_zero": "kept the top_k largest values of the whole batch",
    "schema2_batchtopk": "kept the top_k largest values of the whole batch",
    "schema4_batchtopk_persample": "changed this activation inside schema 4",
    "schema4_batchtopk_batch": "changed this activation inside schema 4",
}


def _family(name: str) -> str:
    """saev's BatchTopK is a per-sample top-k until it stores a threshold (schema 5, late schema 4)."""
    kind = MANIFEST[name]["kind"]
    if kind == "batchtopk" and MANIFEST[name]["schema"] < 5 and not name.endswith("threshold"):
        return "topk"
    return str(kind)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_saev_010_pre_schema_live(tmp_path: Path) -> None:
    """saev 0.1.0 (what `pip install saev` gives): bare config header, encoder on x − b_dec."""
    from saev import config, nn

    torch.manual_seed(0)
    model = nn.SparseAutoencoder(config.SparseAutoencoder(d_vit=8, exp_factor=4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    nn.dump(str(tmp_path / "run" / "sae.pt"), model)
    ref = nn.load(str(tmp_path / "run" / "sae.pt")).eval()
    sae = load_sae(tmp_path / "run")
    assert sae.family == "relu" and sae.d_sae == 32 and "0.1.0" in sae.hparams["source"]
    x = torch.randn(40, 8) * 2 + 0.3
    with torch.no_grad():
        recon, codes, _ = ref(x)
        out = sae(x)
    assert float(ref.b_dec.detach().abs().max()) > 0.1  # the case the old reader got wrong
    _close(out.codes_nf, codes)
    _close(out.recon_nd, recon)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_saev_schema_fixture(name: str) -> None:
    """Each schema's file: saev's own codes and reconstructions within 1e-5, or a one-line refusal."""
    folder = FIXTURES / name
    if name in REFUSED:
        with pytest.raises(CheckpointError, match=REFUSED[name]) as err:
            load_sae(folder)
        assert "sae.pt" in str(err.value) and "\n" not in str(err.value)
        return
    want = load_file(str(folder / "expected.safetensors"))
    sae = load_sae(folder)
    assert sae.family == _family(name)
    with torch.no_grad():
        out = sae(want["x"])
    _close(out.codes_nf, want["codes"])
    _close(out.recon_nd, want["recon"])
    if "prefix_recons" in want:  # Matryoshka prefix decoding: feature order and b_dec kept
        start = 0
        acc = sae.b_dec.detach().expand_as(want["x"]).clone()
        for i, end in enumerate(want["prefixes"].tolist()):
            acc = acc + out.codes_nf[:, start:end] @ sae.W_dec.detach()[start:end]
            _close(acc, want["prefix_recons"][:, i])
            start = end


def test_saev_schema5_batchtopk_is_the_threshold_jumprelu() -> None:
    """Schema 5 BatchTopK at inference is JumpReLU at its stored threshold, not a per-sample top-k."""
    sae = load_sae(FIXTURES / "schema5_batchtopk")
    assert sae.family == "batchtopk" and float(sae.threshold) == pytest.approx(0.4)  # type: ignore[arg-type]
    want = load_file(str(FIXTURES / "schema5_batchtopk" / "expected.safetensors"))
    l0 = (want["codes"] > 0).sum(1)
    assert int(l0.max()) != 4 or int(l0.min()) != 4  # a per-sample top-4 would give exactly 4 everywhere


def test_saev_unknown_schema_and_activation_are_refused(tmp_path: Path) -> None:
    src = (FIXTURES / "schema5_relu" / "sae.pt").read_bytes()
    header, body = src.split(b"\n", 1)
    for patch, match in (({"schema": 9}, "'schema' = 9"),
                         ({"cfg": {"activation": {"cls": "AbsBatchTopK", "params": {"top_k": 4}}}},
                          "AbsBatchTopK")):
        h = json.loads(header)
        if "cfg" in patch:
            h["cfg"].update(patch["cfg"])
        else:
            h.update(patch)
        (tmp_path / "sae.pt").write_bytes(json.dumps(h).encode() + b"\n" + body)
        with pytest.raises(CheckpointError, match=match):
            load_sae(tmp_path)
