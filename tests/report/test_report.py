"""The HTML report on a (fake-stage) study: the numbers in its tables are the results' numbers, a section
whose builder raises is caught, the study's own hypotheses reach it, and a headless Chromium check."""
# ruff: noqa: E402

from __future__ import annotations

import itertools
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import sem, spearmanr
from scipy.stats import t as t_dist

# Helper modules beside the tests (importlib import mode puts no test folder on sys.path).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "study")]

from cdp_browser import Browser, find_chromium
from fake_stages import BACKBONE_LEVEL, fake_study_yaml, use_fakes

from visae.report.page import ERROR_CLASS
from visae.report.write import write_report
from visae.results.table import read_results
from visae.study.config import load_study_config
from visae.study.run import run_study

HYPOTHESES = [
    {"id": "H3-mine", "metric": "m3", "task": "task:retrieval_r1:raw", "threshold": 0.6},
    {"id": "HX", "metric": "m1", "task": "task:cub_acc:raw", "threshold": 0.99, "description": "custom"},
]


class _Tables(HTMLParser):
    """Every ``<table>`` of a page under the ``<h3>`` title before it: {title: [[cell, …], …]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._title = ""
        self._in_h3 = False
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h3":
            self._in_h3, self._title = True, ""
        elif tag == "table" and self._title not in self.tables:
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in_h3 = False
        elif tag in ("td", "th") and self._rows is not None and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables[self._title] = self._rows
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._in_h3:
            self._title += data
        elif self._cell is not None:
            self._cell.append(data)


def tables_of(page: str) -> dict[str, pd.DataFrame]:
    """The page's tables as DataFrames of strings (first row: header), by section title."""
    parser = _Tables()
    parser.feed(page)
    return {title: pd.DataFrame(rows[1:], columns=rows[0]) for title, rows in parser.tables.items() if rows}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    use_fakes(mp)
    try:
        cfg = load_study_config(fake_study_yaml(tmp_path_factory.mktemp("study"), hypotheses=HYPOTHESES))
        _, summary = run_study(cfg, check_inputs=False)
        assert summary is not None and summary.ok
    finally:
        mp.undo()
    return Path(cfg.out_dir)


def _backbone_means(df: pd.DataFrame, metric: str) -> pd.Series:
    sub = df[(df["metric"] == metric) & (df["layer"] == 11) & df["family"].isin(["batchtopk", "raw"])]
    return sub.groupby("backbone")["value"].mean()


@pytest.mark.slow
def test_report_figures_and_no_broken_section(study_dir: Path) -> None:
    page = (study_dir / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    assert ERROR_CLASS not in page, re.findall(rf'<p class="{ERROR_CLASS}">[^<]*', page)
    n_img = len(re.findall(r'src="data:image/png;base64,', page))
    assert n_img >= 8, n_img  # 1a, 1b, 2a, 2b, 3, 4, 6, 7 (fig. 5 needs real SAEs: a note here)
    assert "not enough data" in page  # e.g. Fig. 5 and Table 6 (no M6 in this study)


@pytest.mark.slow
def test_report_tables_hold_the_results(study_dir: Path) -> None:
    results = read_results(study_dir)
    tables = tables_of((study_dir / "report" / "index.html").read_text())
    raw = tables["Table 4 — raw-backbone Moran's I"].set_index("backbone")
    assert list(raw.index) == ["BB-A", "BB-B", "BB-C", "BB-D"]  # the study's labels, in its order
    for b, level in BACKBONE_LEVEL.items():
        assert raw.loc[b.upper(), "mean raw I"] == f"{level * 1.5:.3f}"
    hyp = tables["Hypotheses"].set_index("id")
    m3, r1 = _backbone_means(results, "m3"), _backbone_means(results, "task:retrieval_r1:raw")
    rho, p = spearmanr(m3.to_numpy(), r1.reindex(m3.index).to_numpy())
    assert hyp.loc["H3-mine", "rho"] == f"{rho:.3f}" and hyp.loc["H3-mine", "p"] == f"{p:.3f}"
    assert hyp.loc["H3-mine", "n"] == "4"
    # the exact permutation p: the share of the 4! pairings whose |ρ| reaches the observed one
    y = r1.reindex(m3.index).to_numpy()
    perms = [abs(spearmanr(m3.to_numpy(), y[list(o)])[0]) for o in itertools.permutations(range(4))]
    assert hyp.loc["H3-mine", "p_exact"] == f"{np.mean(np.array(perms) >= abs(rho) - 1e-12):.3f}"
    unc = tables["Uncertainty — headline metrics per backbone"]
    got = unc[(unc["backbone"] == "BB-A") & (unc["metric"] == "m1")].iloc[0]["mean over SAEs [95 % "
                                                                             "t-interval]"]
    vals = results[(results["metric"] == "m1") & (results["backbone"] == "bb-a") & (results["layer"] == 11)
                   & (results["family"] == "batchtopk")]["value"].to_numpy(dtype=float)
    low, high = t_dist.interval(0.95, len(vals) - 1, loc=vals.mean(), scale=sem(vals))
    assert got == f"{vals.mean():.3f} [{low:.3f}, {high:.3f}] (n = {len(vals)})"
    variance = tables["Table 3 — η² per metric"].set_index("metric")
    n_m1 = len(results[(results["metric"] == "m1") & (results["family"] == "batchtopk")
                       & (results["layer"] == 11)])
    assert variance.loc["m1", "n_obs"] == str(n_m1)
    guide = tables["Backbone per task (App. P, Fig. 8)"].set_index("task")
    cub = _backbone_means(results, "task:cub_acc:raw")
    assert guide.loc["cub_acc", "recommended backbone"] == str(cub.idxmax()).upper()
    assert guide.loc["cub_acc", "its score"] == f"{cub.max():.3f}"


@pytest.mark.slow
def test_the_studys_own_hypotheses_reach_the_report(study_dir: Path) -> None:
    hyp = tables_of((study_dir / "report" / "index.html").read_text())["Hypotheses"]
    assert list(hyp["id"]) == ["H3-mine", "HX"]  # not the paper's H1–H4
    assert hyp.set_index("id").loc["HX", "threshold"] == "0.990"


@pytest.mark.slow
def test_a_section_that_raises_is_marked(study_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from visae.report import tables

    def broken(d: object) -> pd.DataFrame:
        raise RuntimeError("table builder bug")

    monkeypatch.setattr(tables, "table_raw", broken)
    page = write_report(study_dir, out_dir=tmp_path)["report"].read_text()
    assert f'<p class="{ERROR_CLASS}">could not compute: RuntimeError: table builder bug' in page


def test_report_notes_instead_of_failing_on_empty_study(tmp_path: Path) -> None:
    paths = write_report(tmp_path, allow_empty=True)
    page = paths["report"].read_text()
    assert page.count("not enough data") >= 8 and ERROR_CLASS not in page
    assert "features job has not run" in paths["features"].read_text()


@pytest.mark.slow
def test_report_cli(study_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visae.cli import app

    res = CliRunner().invoke(app, ["report", str(study_dir), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert f"report: {tmp_path / 'r' / 'index.html'}" in res.output
    ours = tables_of((tmp_path / "r" / "index.html").read_text())
    theirs = tables_of((study_dir / "report" / "index.html").read_text())
    assert ours.keys() == theirs.keys() and all(ours[k].equals(theirs[k]) for k in ours)


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
            w = b.eval("(() => { const i = document.querySelector('#detail img'); return i ? i.naturalWidth "
                       ": -1 })()")
            assert w > 0
            b.eval("document.getElementById('key').value = 'freq'; "
                   "document.getElementById('key').dispatchEvent(new Event('change'))")
            assert b.eval("document.querySelectorAll('#list tr.feature-row').length") == n_rows
        assert b.errors() == []
    finally:
        b.close()


@pytest.mark.slow
def test_report_opens_in_chromium(study_dir: Path) -> None:
    check_in_chromium(study_dir / "report", expect_features=False)
