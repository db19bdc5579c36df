"""``visae synth`` on the command line: the folder on stdout, settings in their order, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from visae.cli import app
from visae.synth import GroundTruth


def test_prints_the_cache_folder_with_its_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "null", "d": 24, "noise": 0.5}))
    res = CliRunner().invoke(app, ["synth", "--config", str(cfg), "--out", str(tmp_path / "c"),
                                   "--images", "12", "--grid", "5", "--features", "20", "--seed", "3",
                                   "--set", "noise=0.1"])
    assert res.exit_code == 0, res.output
    folder = Path(res.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "c" and folder.name.startswith("synth-null-L0-synth-null-train-12-")
    c = GroundTruth.load(folder).config
    # the preset's values, then the YAML file, then the options, then --set
    got = (c.preset, c.d, c.grid, c.n_features, c.seed, c.noise, c.n_images)
    assert got == ("null", 24, 5, 20, 3, 0.1, 12)
    assert c.class_kind == "random"  # from the preset


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "nope"], "synth preset 'nope': unknown; choose one of spatial"),
    ([], "name a preset with --preset"),
    (["--preset", "spatial", "--features", "3"], "n_features (3) is smaller than the structured features"),
    (["--preset", "spatial", "--set", "noise=-1"], "noise: should be greater than or equal to 0"),
    (["--preset", "spatial", "--split", "all"], "split"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
