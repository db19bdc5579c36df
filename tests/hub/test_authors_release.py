"""The authors' release layout (one repo per backbone, one subfolder per configuration) read from an
offline hub cache through the Python API and the CLI; missing repos, configurations and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.errors import CheckpointError, ConfigError
from visae.hub_testing import authors_sae_files, write_authors_repo, write_hub_repo
from visae.io import sha256_file
from visae.sae.checkpoint import load_sae
from visae.sae.hub import list_configurations, locate_sae, parse_sae_ref

REPO = "visaebench/clip-vitb16-saes"
D = 16
CONFIGS = [(8, 64), (16, 128)]


@pytest.fixture
def release(hub_cache: Path) -> Path:
    return write_authors_repo(hub_cache, REPO, CONFIGS, d_in=D)


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def test_parse_references(tmp_path: Path) -> None:
    ref = parse_sae_ref(f"{REPO}:batchtopk_8x_k64@v1")
    assert (ref.target, ref.subfolder, ref.revision, ref.hub) == (REPO, "batchtopk_8x_k64", "v1", True)
    assert str(ref) == f"{REPO}:batchtopk_8x_k64@v1"
    assert parse_sae_ref(REPO, subfolder="batchtopk_8x_k64").subfolder == "batchtopk_8x_k64"
    with pytest.raises(ConfigError, match="--subfolder says 'b'"):
        parse_sae_ref(f"{REPO}:a", subfolder="b")
    (tmp_path / "grid" / "s1").mkdir(parents=True)
    local = parse_sae_ref(f"{tmp_path / 'grid'}:s1")
    assert (local.target, local.subfolder, local.hub) == (str(tmp_path / "grid"), "s1", False)
    with pytest.raises(ConfigError, match="hub repos only"):
        parse_sae_ref(tmp_path / "grid", revision="main")
    with pytest.raises(CheckpointError, match="not a hub reference"):
        parse_sae_ref(str(tmp_path / "nothing-here"))


def test_load_by_repo_and_subfolder(release: Path) -> None:
    state = torch.load(release / "batchtopk_8x_k64" / "sae.pt", weights_only=True)
    for sae in (load_sae(REPO, subfolder="batchtopk_8x_k64"), load_sae(f"{REPO}:batchtopk_8x_k64")):
        assert sae.family == "batchtopk" and sae.d_in == D and sae.d_sae == 8 * D and sae.k == 64
        torch.testing.assert_close(sae.W_enc, state["encoder.final_block.0.weight"].T)
        assert float(sae.threshold) == pytest.approx(float(state["_running_threshold"]))
    assert load_sae(f"{REPO}:batchtopk_16x_k128").k == 128
    resolved = locate_sae(f"{REPO}:batchtopk_16x_k128")
    prov = resolved.provenance
    assert prov["repo"] == REPO and prov["subfolder"] == "batchtopk_16x_k128" and prov["revision"] == "main"
    assert prov["commit"] == release.name
    assert prov["files"]["sae.pt"] == sha256_file(release / "batchtopk_16x_k128" / "sae.pt")
    assert set(prov["files"]) == {"sae.pt", "config.yaml"}
    assert list_configurations(REPO) == ["batchtopk_8x_k64", "batchtopk_16x_k128"]


def test_revision_selects_the_commit(release: Path, hub_cache: Path) -> None:
    files = {f"batchtopk_8x_k64/{k}": v for k, v in authors_sae_files(D, 8, 64, seed=99).items()}
    snap = write_hub_repo(hub_cache, REPO, files, revision="v2")
    main, v2 = load_sae(f"{REPO}:batchtopk_8x_k64"), load_sae(REPO, subfolder="batchtopk_8x_k64",
                                                              revision="v2")
    assert not torch.equal(main.W_enc, v2.W_enc)
    assert locate_sae(f"{REPO}:batchtopk_8x_k64@v2").provenance["commit"] == snap.name
    assert list_configurations(REPO, "v2") == ["batchtopk_8x_k64"]


def test_missing_configuration_repo_and_file(release: Path, hub_cache: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        load_sae(REPO, subfolder="batchtopk_32x_k256")
    msg = str(e.value)
    assert REPO in msg and "batchtopk_32x_k256" in msg and "batchtopk_8x_k64, batchtopk_16x_k128" in msg
    with pytest.raises(CheckpointError) as e:
        load_sae("visaebench/nope-saes:batchtopk_8x_k64")
    msg = str(e.value)
    assert "visaebench/nope-saes" in msg and "batchtopk_8x_k64" in msg and REPO in msg  # the cached ones
    with pytest.raises(CheckpointError, match="one per configuration: batchtopk_8x_k64"):
        load_sae(REPO)  # the repo root holds no checkpoint
    with pytest.raises(CheckpointError, match=r"revision 'v9' is not in the local .* cached revisions: main"):
        load_sae(f"{REPO}:batchtopk_8x_k64@v9")
    # a configuration whose weights file is missing: config.yaml alone is no checkpoint
    write_hub_repo(hub_cache, "visaebench/broken-saes",
                   {"batchtopk_8x_k64/config.yaml": authors_sae_files(D, 8, 64)["config.yaml"]})
    with pytest.raises(CheckpointError, match="no configuration 'batchtopk_8x_k64'"):
        load_sae("visaebench/broken-saes:batchtopk_8x_k64")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    layout = TokenLayout(("cls",), 4, 4, 16)
    return write_synthetic_cache(tmp_path / "cache", rng.normal(size=(12, 16, D)).astype(np.float32),
                                 np.arange(12) % 2, ["a", "b"], layout, backbone="clip-b16", layer=11)


@pytest.mark.parametrize("how", ["colon", "option"])
def test_cli_eval_by_repo_and_subfolder(release: Path, cache_dir: Path, tmp_path: Path, how: str) -> None:
    sae_args = (["--sae", f"{REPO}:batchtopk_16x_k128"] if how == "colon"
                else ["--sae", REPO, "--subfolder", "batchtopk_16x_k128", "--revision", "main"])
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", *sae_args, "--cache", str(cache_dir), "--metrics", "m2",
                                   "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m2 = json.loads((out / "m2.json").read_text())
    assert m2["result"]["d_sae"] == 16 * D and m2["value"] is not None
    prov = m2["inputs"]["sae_provenance"]
    assert prov["repo"] == REPO and prov["subfolder"] == "batchtopk_16x_k128"
    assert prov["commit"] == release.name
    assert prov["files"]["sae.pt"] == sha256_file(release / "batchtopk_16x_k128" / "sae.pt")


def test_cli_errors_name_repo_subfolder_and_configurations(release: Path, cache_dir: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app,
                        ["eval", "--sae", REPO, "--subfolder", "batchtopk_4x_k8", "--cache", str(cache_dir)])
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert REPO in line and "batchtopk_4x_k8" in line and "batchtopk_8x_k64, batchtopk_16x_k128" in line
    res = runner.invoke(app,
                        ["eval", "--sae", "visaebench/nope-saes:batchtopk_8x_k64", "--cache", str(cache_dir)])
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "visaebench/nope-saes" in line and "batchtopk_8x_k64" in line
    res = runner.invoke(app, ["eval", "--sae", f"{REPO}:a", "--subfolder", "b", "--cache", str(cache_dir)])
    assert res.exit_code == 2 and "--subfolder says 'b'" in _error_line(res.output)


def test_cli_ls_repo(release: Path) -> None:
    res = CliRunner().invoke(app, ["ls", REPO])
    assert res.exit_code == 0, res.output
    assert "2 configuration(s)" in res.output and "authors' release for clip-b16" in res.output
    assert res.output.index("batchtopk_8x_k64") < res.output.index("batchtopk_16x_k128")
    res = CliRunner().invoke(app, ["ls", "visaebench/nope-saes"])
    assert res.exit_code == 2 and "visaebench/nope-saes" in _error_line(res.output)


def test_cli_eval_of_a_release_sae_on_another_backbone_says_so(release: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    other = write_synthetic_cache(tmp_path / "dino", rng.normal(size=(6, 16, D)).astype(np.float32),
                                  np.arange(6) % 2, ["a", "b"], TokenLayout(("cls",), 4, 4, 16),
                                  backbone="dinov2-b14", layer=11)
    res = CliRunner().invoke(app, ["eval", "--sae", f"{REPO}:batchtopk_8x_k64", "--cache", str(other),
                                   "--metrics", "m2", "--device", "cpu", "--strict"])
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "clip-b16" in line and "dinov2-b14" in line
