"""Running studies with fake stages: resume, no rework, failures reported, locking, results table, CLI."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_stages beside this file (importlib mode)

from failing import FailingExecute, nth_of_kind
from fake_stages import fake_study_yaml, use_fakes

from visae.errors import StudyError
from visae.results.table import read_results
from visae.study.config import load_study_config
from visae.study.protocol import study_lock
from visae.study.run import run_study
from visae.study.stages import STAGES


def test_run_twice_second_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch)
    cfg = load_study_config(fake_study_yaml(tmp_path))
    plan, summary = run_study(cfg, check_inputs=False)
    assert summary is not None and summary.ok, summary.describe(plan)
    assert len(summary.ran) == len(plan.jobs)
    df = read_results(cfg.out_dir)
    assert {"backbone", "family", "expansion", "k", "layer", "metric", "value", "sae_id"} <= set(df.columns)
    n_saes = 4 * 4 + 4 + 2
    assert df[df["metric"] == "m1"]["sae_id"].nunique() == n_saes
    assert {"m4@k=1", "m7:alpha=0.7:beta=0.3", "task:retrieval_r1:raw", "task:cub_acc:codes",
            "raw"} <= set(df["metric"])
    assert (Path(cfg.out_dir) / "report" / "index.html").exists()
    _, again = run_study(cfg, check_inputs=False)
    assert again is not None and again.ran == [] and len(again.skipped) == len(plan.jobs)


@pytest.mark.slow
def test_injected_failure_then_resume_equals_clean_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch)
    clean = load_study_config(fake_study_yaml(tmp_path / "a"))
    run_study(clean, check_inputs=False)
    crashed = load_study_config(fake_study_yaml(tmp_path / "b"))
    plan, summary = run_study(crashed, check_inputs=False, execute=FailingExecute(nth_of_kind("eval", 5)))
    assert summary is not None and not summary.ok
    assert len(summary.failed) == 1 and summary.blocked  # collect/analysis/report blocked, not dropped
    assert "injected failure in eval" in summary.describe(plan)
    assert list((Path(crashed.out_dir) / "logs").glob("eval-*.log"))
    _, resumed = run_study(crashed, check_inputs=False)
    assert resumed is not None and resumed.ok
    assert "eval" in {plan.by_id()[j].kind for j in resumed.ran}
    assert not any(plan.by_id()[j].kind == "train" for j in resumed.ran)
    a = read_results(clean.out_dir).sort_values(["sae_id", "metric"]).reset_index(drop=True)
    b = read_results(crashed.out_dir).sort_values(["sae_id", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_failing_job_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch)
    cfg = load_study_config(fake_study_yaml(tmp_path, backbones=("bb-a",), tasks=[]))
    flaky = FailingExecute.first_runs("raw", 1, tmp_path)  # first raw job fails once; a retry succeeds
    plan, summary = run_study(cfg, check_inputs=False, max_retries=1, execute=flaky)
    assert summary is not None and summary.ok, summary.describe(plan)
    assert (tmp_path / ".inject-raw").read_text() == "1"  # it did fail once


def test_lock(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with study_lock(root), pytest.raises(StudyError, match="locked by pid"), study_lock(root):
        pass
    # A stale lock of a dead process on this host is taken over.
    (root / "study.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    with study_lock(root):
        assert json.loads((root / "study.lock").read_text())["pid"] == os.getpid()
    assert not (root / "study.lock").exists()


@pytest.mark.slow
def test_cli_dry_run_status_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visae.cli import app

    use_fakes(monkeypatch)
    path = fake_study_yaml(tmp_path, backbones=("bb-a", "bb-b", "bb-c"))
    runner = CliRunner()
    res = runner.invoke(app, ["study", "run", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "todo  cache" in res.output and "total: 0/" in res.output
    res = runner.invoke(app, ["study", "run", str(path), "--set", "device=cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["study", "status", str(path)])
    assert res.exit_code == 0 and "todo" not in res.output
    def broken_report(*args: object) -> dict[str, object]:
        raise RuntimeError("the report broke")

    monkeypatch.setitem(STAGES, "report", replace(STAGES["report"], run=broken_report))
    (tmp_path / "out" / "report" / "done.json").unlink()
    res = runner.invoke(app, ["study", "run", str(path)])
    assert res.exit_code == 1 and "FAILED report" in res.output and "the report broke" in res.output
