"""Issue 13, item 2: a failed job is one complete line naming its log; a run with failures says its report is
partial or stale; ``--dry-run`` finds every problem it can without computing, each by its YAML path."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_stages beside this file (importlib mode)

from fake_stages import fake_study_yaml, use_fakes

from visae.study.stages import STAGES


def _cli(args: list[str]) -> tuple[int, str]:
    from visae.cli import app

    res = CliRunner().invoke(app, args)
    text = res.output
    if res.stderr_bytes is not None and res.stderr not in text:
        text += res.stderr
    return res.exit_code, text


def test_failure_line_keeps_the_whole_message_and_report_is_not_fresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch)
    path = fake_study_yaml(tmp_path, backbones=("bb-a", "bb-b"))
    code, text = _cli(["study", "run", str(path)])
    report = tmp_path / "out" / "report" / "index.html"
    assert code == 0 and f"report: {report}" in text, text[-2000:]

    def broken(*args: Any) -> dict[str, Any]:
        raise RuntimeError("the images are missing (first part)\n); install the Debian package 'x' or "
                           "fetch them")

    monkeypatch.setitem(STAGES, "eval", replace(STAGES["eval"], run=broken))
    done = sorted((tmp_path / "out" / "evals").glob("*/done.json"))[0]
    done.unlink()
    code, text = _cli(["study", "run", str(path)])
    assert code == 1, text[-2000:]
    failed = [li for li in text.splitlines() if li.strip().startswith("FAILED")]
    assert failed and all("the images are missing (first part) ); install the Debian package 'x'" in li
                          for li in failed), failed
    log = tmp_path / "out" / "logs" / f"eval-{done.parent.name}.log"
    assert log.is_file() and all(f"(log: {log})" in li for li in failed), failed
    assert "Traceback" in log.read_text()
    line = next(li for li in text.splitlines() if li.startswith("report:"))
    assert "partial or stale" in line and "1 job(s) failed" in line, line


def _bad_study(tmp_path: Path) -> Path:
    path = fake_study_yaml(tmp_path, backbones=("bb-a",))
    data = yaml.safe_load(path.read_text())
    data.update({
        "plugins": ["visae.study.testing"], "backbones": ["tiny-vit-a"], "layers": [1, 5],
        "metrics": ["m1", "m2", "m9"], "metric_configs": {"m4": {"ks": [0]}, "m8": {}},
        "train": {"lr": -1, "batchsize": 3}, "cache": {"batch_size": 0},
        "saes": [{"family": "topk", "expansions": [2], "ks": [4, 100]},
                 {"family": "nosuch", "expansions": [2], "ks": [4]}],
        "tasks": [{"name": "r", "kind": "retrievall"},
                  {"name": "c", "kind": "classification", "source": "nowhere"}],
        "hypotheses": [{"id": "H9", "metric": "m3", "task": "task:x", "threshold": 2}],
    })
    data["data"]["eval"] = {"spec": "nosuch:foo", "split": "validation"}
    path.write_text(yaml.safe_dump(data))
    return path


def test_dry_run_names_every_problem_by_its_yaml_path(tmp_path: Path) -> None:
    path = _bad_study(tmp_path)
    code, text = _cli(["study", "run", str(path), "--dry-run"])
    assert code == 2 and "Traceback" not in text, text[-3000:]
    errors = [li for li in text.splitlines() if li.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], text
    expected = ["metrics[2]: unknown metric 'm9'",
                "metric_configs.m4.ks.0: should be greater than or equal to 1",
                "metric_configs.m8: unknown metric",
                "metric_configs.m4: settings for m4, which no SAE block runs", "cache.batch_size:",
                "train.lr: should be greater than 0",
                "train.batchsize: unknown key", "layers[1]: 5 is not a block of tiny-vit-a",
                "saes[0].ks[1]: K=100 exceeds the dictionary size 64",
                "saes[1].name: 'main' is already the name of saes[0]",
                "saes[1].family: unknown SAE family 'nosuch'",
                "data.eval.spec: unknown image source 'nosuch:foo'",
                "data.eval.split: unknown split 'validation'",
                "tasks[0].kind: unknown task kind 'retrievall'",
                "tasks[1].source: no image set named 'nowhere'",
                "hypotheses[0].metric: 'm3' is not computed",
                "hypotheses[0].task: 'task:x' is not a task metric",
                "hypotheses[0].threshold: 2.0 is not a Spearman"]
    problems = [li.strip() for li in text.splitlines() if li.startswith("  ")]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected), problems
    assert not (tmp_path / "out").exists()  # nothing written


def test_dry_run_of_a_sound_study_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fakes(monkeypatch)
    code, text = _cli(["study", "run", str(fake_study_yaml(tmp_path)), "--dry-run"])
    assert code == 0 and "total: 0/" in text, text[-2000:]
    from visae.study.config import load_study_config
    from visae.study.templates import template_path
    from visae.study.validate import validate_study

    assert validate_study(load_study_config(template_path("demo"))) == []
