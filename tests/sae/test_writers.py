"""``visae export --format saelens|saev``: the written files load in the peer library with visae's own
raw-space outputs (normalize → encode → decode → de-normalize), within 1e-5.

Known answers: sae-lens's own ``SAE.load_from_disk`` and forward (live); for saev, the outputs that saev's own
``nn.load`` gave on the export of the same SAE (saev's current version is not on PyPI; recorded by
``scripts/make_interop_fixtures.py``), after checking that today's export writes the same tensors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sae_lens
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.checkpoint import load_sae, save_sae
from visae.sae.export import export_saes
from visae.sae.registry import make_sae

D, F, K = 8, 32, 4
FIXTURES = Path(__file__).parents[1] / "data" / "interop" / "saev_export"


def planted_sae(family: str, seed: int = 0) -> SAE:
    """A small SAE with non-trivial weights, biases, thresholds and normalization statistics."""
    g = torch.Generator().manual_seed(seed)
    sae = make_sae(family, D, d_sae=F, k=K)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, F, generator=g) * 0.5)
        sae.b_enc.copy_(torch.randn(F, generator=g) * 0.3)
        sae.W_dec.copy_(torch.randn(F, D, generator=g) * 0.5)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.3)
        if family == "jumprelu":
            sae.threshold.copy_(torch.rand(F, generator=g) * 0.5)  # type: ignore[operator]
        if family in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.35)  # type: ignore[operator]
        if family == "gated":
            sae.r_mag.copy_(torch.randn(F, generator=g) * 0.3)  # type: ignore[operator]
            sae.b_mag.copy_(torch.randn(F, generator=g) * 0.3)  # type: ignore[operator]
            sae.l1_coeff.fill_(7.0)  # type: ignore[operator]  # training-only: never written
    sae.set_normalization(torch.randn(D, generator=g) * 2.0, 3.5)
    return sae.eval()


def raw_inputs(sae: SAE, n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return sae.act_mean + float(sae.act_std) * torch.randn(n, D, generator=g)


def visae_raw(sae: SAE, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """visae's own path: normalize → encode → decode → de-normalize."""
    with torch.no_grad():
        out = sae(sae.normalize(a))
    return out.codes_nf, out.recon_nd * sae.act_std + sae.act_mean


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-5 * max(1.0, float(want.abs().max())), rtol=1e-5)


@pytest.mark.parametrize("family", ["relu", "topk", "jumprelu", "batchtopk", "matryoshka", "gated",
                                    "archetypal"])
def test_saelens_export_loads_in_saelens(family: str, tmp_path: Path) -> None:
    sae = planted_sae(family)
    save_sae(sae, tmp_path / "ours")
    export_saes(tmp_path / "ours", tmp_path / "out", fmt="saelens")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    ref = sae_lens.SAE.load_from_disk(str(tmp_path / "out")).eval()
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu", "matryoshka": "jumprelu",
                                   "archetypal": "topk"}.get(family, family)
    a = raw_inputs(sae)
    codes, recon = visae_raw(sae, a)
    assert int((codes > 0).sum()) > 0
    with torch.no_grad():
        ref_codes = ref.encode(a)
        _close(ref_codes, codes)
        _close(ref.decode(ref_codes), recon)


def test_gated_export_writes_sae_lens_names_only(tmp_path: Path) -> None:
    """b_gate/r_mag/b_mag unchanged by the normalization fold (both paths read the same (x − b_dec) W_enc);
    no b_enc, no training-only l1_coeff; visae reads the export back as Gated."""
    sae = planted_sae("gated")
    save_sae(sae, tmp_path / "ours")
    export_saes(tmp_path / "ours", tmp_path / "out", fmt="saelens")
    state = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    assert sorted(state) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    for ours, theirs in (("b_enc", "b_gate"), ("r_mag", "r_mag"), ("b_mag", "b_mag")):
        torch.testing.assert_close(state[theirs], getattr(sae, ours).detach(), atol=0, rtol=0)
    back = load_sae(tmp_path / "out")
    assert back.family == "gated"
    a = raw_inputs(sae)
    codes, recon = visae_raw(sae, a)
    with torch.no_grad():
        out = back(a)
    _close(out.codes_nf, codes)
    _close(out.recon_nd, recon)
    with pytest.raises(CheckpointError, match="no gated encoder"):
        export_saes(tmp_path / "ours", tmp_path / "out2", fmt="saev")


def test_uncalibrated_matryoshka_is_refused_by_the_writers(tmp_path: Path) -> None:
    from visae.sae.writers import write_saelens, write_saev

    sae = planted_sae("matryoshka")
    sae.threshold.fill_(float("nan"))  # type: ignore[operator]
    for write in (write_saelens, write_saev):
        with pytest.raises(CheckpointError, match="no inference threshold yet"):
            write(sae, tmp_path / write.__name__)


def test_grid_exports_one_subfolder_per_configuration(tmp_path: Path) -> None:
    for name, family in (("batchtopk_4x_k4", "batchtopk"), ("topk_4x_k4", "topk")):
        save_sae(planted_sae(family), tmp_path / "grid" / name)
    items = export_saes(tmp_path / "grid", tmp_path / "out", fmt="saelens")
    assert sorted(it.name for it in items) == ["batchtopk_4x_k4", "topk_4x_k4"]
    for it in items:
        assert (tmp_path / "out" / it.name / "cfg.json").is_file()
        sae_lens.SAE.load_from_disk(str(tmp_path / "out" / it.name))
    assert (tmp_path / "out" / "README.md").is_file()


def test_uncalibrated_batchtopk_and_unknown_format_are_refused(tmp_path: Path) -> None:
    sae = planted_sae("batchtopk")
    sae.threshold.fill_(float("nan"))  # type: ignore[operator]
    save_sae(sae, tmp_path / "ours")
    # refused at load already (a non-finite threshold is never read), so nothing is exported
    with pytest.raises(CheckpointError, match="tensor 'threshold' holds 1 of 1 non-finite"):
        export_saes(tmp_path / "ours", tmp_path / "out", fmt="saelens")
    assert not (tmp_path / "out").exists()
    from visae.errors import ConfigError

    with pytest.raises(ConfigError, match="'onnx' is not an export format"):
        export_saes(tmp_path / "ours", tmp_path / "out2", fmt="onnx")
    save_sae(planted_sae("jumprelu"), tmp_path / "jr")
    with pytest.raises(CheckpointError, match="saev has no per-feature JumpReLU"):
        export_saes(tmp_path / "jr", tmp_path / "out3", fmt="saev")


@pytest.mark.parametrize("family", ["relu", "topk", "batchtopk"])
def test_saev_export_matches_saev_own_load(family: str, tmp_path: Path) -> None:
    """The export's tensors equal those saev's own loader read when the fixture was made, and saev's outputs
    then equal visae's raw-space outputs now."""
    sae = planted_sae(family)
    save_sae(sae, tmp_path / "ours")
    export_saes(tmp_path / "ours", tmp_path / "out", fmt="saev")
    raw = (tmp_path / "out" / "sae.pt").read_bytes()
    header, body = raw.split(b"\n", 1)
    assert json.loads(header)["schema"] == 5
    state = torch.load(io.BytesIO(body), weights_only=True)
    fixture = FIXTURES / family
    loaded_by_saev = torch.load(io.BytesIO((fixture / "sae.pt").read_bytes().split(b"\n", 1)[1]),
                                weights_only=True)
    assert set(state) == set(loaded_by_saev)
    for name, t in state.items():
        torch.testing.assert_close(t, loaded_by_saev[name], atol=0, rtol=0)
    want = load_file(str(fixture / "expected.safetensors"))
    codes, recon = visae_raw(sae, want["a"])
    _close(want["codes"], codes)
    _close(want["recon"], recon)
    back = load_sae(tmp_path / "out")  # and visae reads its own export back
    _close(back(want["a"]).codes_nf.detach(), codes)


def test_saev_matryoshka_export_is_saev_batchtopk(tmp_path: Path) -> None:
    """saev saves a Matryoshka SAE as a BatchTopK one (its Matryoshka is an objective): a visae Matryoshka
    SAE with the planted BatchTopK weights writes exactly the BatchTopK fixture's tensors and activation,
    and saev's outputs on that fixture equal the Matryoshka SAE's raw-space outputs."""
    sae = planted_sae("matryoshka")
    save_sae(sae, tmp_path / "ours")
    export_saes(tmp_path / "ours", tmp_path / "out", fmt="saev")
    header, body = (tmp_path / "out" / "sae.pt").read_bytes().split(b"\n", 1)
    fixture = FIXTURES / "batchtopk"
    fixture_header, fixture_body = (fixture / "sae.pt").read_bytes().split(b"\n", 1)
    assert json.loads(header)["cfg"]["activation"] == json.loads(fixture_header)["cfg"]["activation"]
    state = torch.load(io.BytesIO(body), weights_only=True)
    loaded_by_saev = torch.load(io.BytesIO(fixture_body), weights_only=True)
    assert set(state) == set(loaded_by_saev)
    for name, t in state.items():
        torch.testing.assert_close(t, loaded_by_saev[name], atol=0, rtol=0)
    want = load_file(str(fixture / "expected.safetensors"))
    codes, recon = visae_raw(sae, want["a"])
    _close(want["codes"], codes)
    _close(want["recon"], recon)


def test_cli_export_format(tmp_path: Path) -> None:
    from visae.cli import app

    save_sae(planted_sae("topk"), tmp_path / "ours")
    args = ["export", str(tmp_path / "ours"), str(tmp_path / "out"), "--format", "saev"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "sae.pt").is_file() and load_sae(tmp_path / "out").family == "topk"


def test_archetypal_exports_as_the_topk_sae_of_its_fused_dictionary(tmp_path: Path) -> None:
    """RA-SAE infers as per-token TopK with its fused dictionary in ``W_dec``: its saev and SAELens exports
    are exactly those of a TopK SAE holding the same tensors (whose exports the tests above check against
    saev and sae-lens)."""
    arch = planted_sae("archetypal")
    twin = make_sae("topk", D, d_sae=F, k=K)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(twin, name).copy_(getattr(arch, name))
    twin.set_normalization(arch.act_mean, float(arch.act_std))
    for fmt, weights in (("saev", "sae.pt"), ("saelens", "sae_weights.safetensors")):
        files = {}
        for name, sae in (("arch", arch), ("twin", twin.eval())):
            save_sae(sae, tmp_path / name)
            export_saes(tmp_path / name, tmp_path / f"{name}_{fmt}", fmt=fmt)
            files[name] = (tmp_path / f"{name}_{fmt}" / weights).read_bytes()
            if fmt == "saev":
                header, body = files[name].split(b"\n", 1)
                files[name] = json.dumps(json.loads(header)["cfg"]).encode() + body
        assert files["arch"] == files["twin"], fmt
