"""The HTML report on a (fake-stage) study: figures, notes for missing inputs, and a headless Chromium check."""
# ruff: noqa: E402

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

# Helper modules beside the tests (importlib import mode puts no test folder on sys.path).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "study")]

from cdp_browser import Browser, find_chromium
from fake_stages import fake_study_yaml, use_fakes

from visae.report.write import write_report
from visae.study.config import load_study_config
from visae.study.run import run_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    use_fakes(mp)
    try:
        cfg = load_study_config(fake_study_yaml(tmp_path_factory.mktemp("study")))
        _, summary = run_study(cfg, check_inputs=False)
        assert summary is not None and summary.ok
    finally:
        mp.undo()
    return Path(cfg.out_dir)


@pytest.mark.slow
def test_report_has_figures_and_tables(study_dir: Path) -> None:
    page = (study_dir / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    n_img = len(re.findall(r'src="data:image/png;base64,', page))
    assert n_img >= 8, n_img  # 1a, 1b, 2a, 2b, 3, 4, 6, 7 (fig. 5 needs real SAEs: a note here)
    for title in ("Figure 1a", "Figure 3", "Table 3", "Table 4", "Table 7", "Table 9", "Hypotheses",
                  "Practitioner guide"):
        assert title in page
    assert "not enough data" in page  # e.g. Fig. 5 and Table 6 (no M6 in this study)


def test_report_notes_instead_of_failing_on_empty_study(tmp_path: Path) -> None:
    paths = write_report(tmp_path)
    page = paths["report"].read_text()
    assert page.count("not enough data") >= 8
    assert paths["features"].exists()


@pytest.mark.slow
def test_report_cli(study_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visae.cli import app

    res = CliRunner().invoke(app, ["report", str(study_dir), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "index.html").exists()
    results = pd.read_parquet(study_dir / "results" / "results.parquet")
    assert len(results)


def check_in_chromium(report_dir: Path, expect_features: bool) -> None:
    """Open both pages in headless Chromium: no console errors, every image decoded, browser works."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    b = Browser(exe)
    try:
        b.goto((report_dir / "index.html").resolve().as_uri())
        assert b.errors() == []
        widths = b.eval("Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)")
        assert widths and all(w > 0 for w in widths), widths
        b.goto((report_dir / "features.html").resolve().as_uri())
        assert b.errors() == []
        n_rows = b.eval("document.querySelectorAll('#list tr.feature-row').length")
        if expect_features:
            assert n_rows > 0
            b.eval("document.querySelector('#list tr.feature-row').click()")
            opened = b.eval("document.getElementById('detail').dataset.feature || ''")
            assert opened != ""
            w = b.eval("(() => { const i = document.querySelector('#detail img'); return i ? i.naturalWidth : -1 })()")
            assert w > 0
            b.eval("document.getElementById('key').value = 'freq'; document.getElementById('key').dispatchEvent(new Event('change'))")
            assert b.eval("document.querySelectorAll('#list tr.feature-row').length") == n_rows
        assert b.errors() == []
    finally:
        b.close()


@pytest.mark.slow
def test_report_opens_in_chromium(study_dir: Path) -> None:
    check_in_chromium(study_dir / "report", expect_features=False)
