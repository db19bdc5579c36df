"""Study templates ship inside the package and run by name, writing into the current folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from visae.cli import app
from visae.errors import ConfigError
from visae.study.templates import TEMPLATES_DIR, resolve_study, template_names, template_path

REPO_STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_the_templates_are_the_repositorys_studies_folder() -> None:
    """One copy: the package's studies folder is the repository's (a link in a checkout; package data in a
    wheel), so every YAML under studies/ ships and none diverges."""
    assert {"demo", "paper", "release"} <= set(template_names())
    assert template_names() == sorted(p.stem for p in REPO_STUDIES.glob("*.yaml"))
    assert TEMPLATES_DIR.resolve() == REPO_STUDIES
    for name in template_names():
        assert template_path(name).read_bytes() == (REPO_STUDIES / f"{name}.yaml").read_bytes()
    assert template_path("demo.yaml") == template_path("demo")


def test_a_template_by_name_writes_into_the_current_folder(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_study("demo") == (template_path("demo"), [f"out_dir={tmp_path / '.visae-demo'}"])
    assert resolve_study("paper")[1] == [f"out_dir={tmp_path / 'paper-study'}"]
    own = tmp_path / "demo"  # a file of that name in the current folder wins over the template
    own.write_text("name: mine\n")
    assert resolve_study("demo") == (Path("demo"), []) and own.is_file()
    with pytest.raises(ConfigError, match=r"'nope': no such YAML file.*templates: .*demo, paper, release"):
        resolve_study("nope")
    with pytest.raises(ConfigError, match="no such YAML file"):
        resolve_study("../studies/demo")


def test_study_run_demo_dry_run_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["study", "run", "demo", "--dry-run"])
    assert r.exit_code == 0, r.output[-2000:]
    assert f"study folder {tmp_path / '.visae-demo'}" in r.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
    listed = CliRunner().invoke(app, ["study", "templates"]).stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == template_names()
