"""The documentation: README size and links, the generated CLI and performance pages, the site's strict
build, and the tutorial notebook, executed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "docs" / "scripts"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_one_screen_and_its_links_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert text.index("make demo") < text.index("## Quick start")  # the two commands come first
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    missing = [t for t in links if not t.startswith("http") and not (ROOT / t).exists()]
    assert links and missing == [], missing


def test_every_metric_has_its_page_and_the_nav_lists_it() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for m in ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "raw"):
        page = ROOT / "docs" / "metrics" / f"{m}.md"
        assert page.is_file() and f"metrics/{m}.md" in nav
        if m != "raw":
            assert "## visaebench 0.1.0" in page.read_text(encoding="utf-8")


def test_cli_reference_lists_every_command_and_option() -> None:
    import typer

    from visae.cli import app

    md = _script("cli_reference").render()
    top = typer.main.get_command(app)
    ctx = _script("cli_reference").Context(top, info_name="visae")
    for name in top.list_commands(ctx):
        cmd = top.get_command(ctx, name)
        if hasattr(cmd, "list_commands"):
            for sub in cmd.list_commands(ctx):
                assert f"## `visae {name} {sub}`" in md
        else:
            assert f"## `visae {name}`" in md
    assert "`--expansion`" in md and "`--tokens-per-image`" in md  # options of train and cache


def test_performance_tables_one_per_release(tmp_path: Path) -> None:
    perf = _script("perf_tables")
    for rel, date in (("0.1.0", "2026-01-01"), ("0.2.0", "2026-02-01"), ("Unreleased", "2026-03-01")):
        (tmp_path / f"{rel}.json").write_text(json.dumps({
            "release": rel, "date": date, "machine": "m", "note": "",
            "rows": [{"what": f"w|{rel}", "script": "s.py", "ours": "1", "peer": "2", "ratio": "0.5×",
                      "goal": "g"}]}))
    md = perf.render(tmp_path)
    heads = re.findall(r"^## (\S+)", md, re.M)
    assert heads == ["Unreleased", "0.2.0", "0.1.0"]  # newest first
    assert "w\\|0.2.0" in md  # a | inside a cell is escaped
    assert re.findall(r"^## (\S+)", perf.render(), re.M)  # the project's own files render


@pytest.mark.slow
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None
    r = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    for page in ("index.html", "metrics/m4/index.html", "cli/index.html", "api/cache/index.html",
                 "performance/index.html", "tutorial/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "visae study run" in (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")


def test_stored_tutorial_matches_its_source() -> None:
    """docs/tutorial.ipynb holds make_tutorial.py's cells (regenerate: make_tutorial.py --execute)."""
    nbformat = pytest.importorskip("nbformat", reason="the docs extra is not installed")
    stored = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    built = _script("make_tutorial").build()
    assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in built.cells]


@pytest.mark.slow
def test_tutorial_notebook_runs(tmp_path: Path) -> None:
    pytest.importorskip("nbclient", reason="the docs extra is not installed")
    make = _script("make_tutorial")
    nb = make.execute(make.build(), tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any(h.count("<img src='data:image/png;base64,") >= 2 for h in html)  # features shown inline
    table = nb.cells[-2].outputs[-1]["data"]["text/plain"]
    assert "batchtopk_4x_k16" in table and "topk_4x_k16" in table and "M7 absorption" in table
    for name in ("batchtopk_4x_k16", "topk_4x_k16"):
        assert (tmp_path / "tutorial-run" / "results" / name / "m4.json").is_file()
