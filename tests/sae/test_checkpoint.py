"""Checkpoints: our format round trip, and readers for the authors' (overcomplete), SAELens and saev files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from visae.errors import CheckpointError
from visae.sae.checkpoint import load_sae, sae_fingerprint, save_sae
from visae.sae.registry import make_sae


@pytest.mark.parametrize("family", ["batchtopk", "topk", "jumprelu", "relu"])
def test_roundtrip_and_fingerprint(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    sae = make_sae(family, 8, expansion=4, k=3)
    sae.set_normalization(torch.arange(8.0), 2.5)
    if family == "batchtopk":
        sae.threshold.fill_(0.25)
    save_sae(sae, tmp_path / "s", provenance={"cache_hash": "abc", "steps": 3})
    back = load_sae(tmp_path / "s")
    assert type(back) is type(sae) and sae_fingerprint(back) == sae_fingerprint(sae)
    cfg = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert cfg["family"] == family and cfg["provenance"]["cache_hash"] == "abc"
    assert cfg["normalization"]["std"] == 2.5
    if family == "batchtopk":
        assert cfg["threshold"] == 0.25
    x = torch.randn(5, 8)
    sae.eval()
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    with torch.no_grad():
        sae.W_dec.add_(1e-3)
    assert sae_fingerprint(sae) != sae_fingerprint(back)


def test_wrong_shape_and_family_are_clear(tmp_path: Path) -> None:
    sae = make_sae("topk", 8, expansion=4, k=3)
    save_sae(sae, tmp_path / "s")
    cfg_path = tmp_path / "s" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["d_sae"] = 16
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError,
                       match=r"model\.safetensors: tensor .W_dec. has shape \(32, 8\), expected \(16, 8\)"):
        load_sae(tmp_path / "s")
    cfg["d_sae"], cfg["family"] = 32, "no-such-family"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"config\.yaml.*family"):
        load_sae(tmp_path / "s")
    with pytest.raises(CheckpointError, match="no SAE checkpoint"):
        load_sae(tmp_path)


def _overcomplete():
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # overcomplete 0.3.0 imports it
    return pytest.importorskip("overcomplete.sae")


def test_authors_release_overcomplete_batchtopk(tmp_path: Path) -> None:
    oc = _overcomplete()
    torch.manual_seed(0)
    d, f, k, batch = 8, 32, 3, 16
    model = oc.BatchTopKSAE(d, f, top_k=k * batch)
    with torch.no_grad():
        model.dictionary.multiplier.fill_(0.3)
        model.dictionary._weights.mul_(2.0)
    x = torch.randn(batch, d)
    model.train()
    model(x)  # sets running_threshold from a training batch
    state = dict(model.state_dict())
    state["_running_threshold"] = model.running_threshold.clone()
    folder = tmp_path / "batchtopk_4x_k3"
    folder.mkdir()
    torch.save(state, folder / "sae.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"threshold": float(model.running_threshold)}))
    sae = load_sae(tmp_path, subfolder="batchtopk_4x_k3")
    assert sae.family == "batchtopk" and sae.k == k and sae.d_sae == f
    model.eval()
    xt = torch.randn(20, d)
    _, codes_ref, recon_ref = model(xt)
    out = sae(xt)
    torch.testing.assert_close(out.codes_nf, codes_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.recon_nd, recon_ref, atol=1e-5, rtol=1e-5)
    # k from top_k / batch_size in config.yaml wins over the folder name
    (folder / "config.yaml").write_text(yaml.safe_dump({"threshold": 0.1, "top_k": 5 * 64, "batch_size": 64}))
    assert load_sae(folder).k == 5


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "batchtopk_8x_k4"
    folder.mkdir()
    torch.save({"x": Evil()}, folder / "sae.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_sae(folder)


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"not found.*Hugging Face cache"):
        load_sae("visaebench/no-such-repo-xyz", subfolder="batchtopk_8x_k64")


def test_format_detectors_and_a_plugin_format(tmp_path: Path) -> None:
    from visae.sae.formats import CHECKPOINT_FORMATS, CheckpointFormat, detect_format

    lens, saev, authors, empty = (tmp_path / n for n in ("lens", "saev", "authors", "empty"))
    for folder in (lens, saev, authors, empty):
        folder.mkdir()
    save_file({"W_enc": torch.zeros(2, 3)}, str(lens / "sae_weights.safetensors"))
    (lens / "cfg.json").write_text("{}")
    (saev / "sae.pt").write_bytes(b'{"schema": 2}\n')
    torch.save({"dictionary._weights": torch.zeros(3, 2)}, authors / "sae.pt")
    got = {p.name: detect_format(p) for p in (lens, saev, authors, authors / "sae.pt", empty)}
    assert {k: (v[0].name, v[1].name) if v else None for k, v in got.items()} == {
        "lens": ("saelens", "lens"), "saev": ("saev", "sae.pt"), "authors": ("authors", "sae.pt"),
        "sae.pt": ("authors", "sae.pt"), "empty": None}
    with pytest.raises(CheckpointError, match=r"looked for model\.safetensors\+config\.yaml, "
                                              r"sae_weights\.safetensors\+cfg\.json, sae\.pt"):
        load_sae(empty)

    planted = make_sae("relu", 4, d_sae=8)
    fmt = CheckpointFormat("planted", ("planted.bin",), lambda p: p
                           if (p / "planted.bin").is_file() else None,
                           lambda p: planted)
    CHECKPOINT_FORMATS.register("planted", fmt)
    try:
        (empty / "planted.bin").write_bytes(b"x")
        assert load_sae(empty) is planted
        with pytest.raises(CheckpointError, match="checkpoint format 'planted' is already registered"):
            CHECKPOINT_FORMATS.register("planted", fmt)
    finally:
        CHECKPOINT_FORMATS.unregister("planted")
