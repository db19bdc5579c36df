"""A real tiny study (tiny random ViTs, offline digits): run twice (second does nothing), crash + resume
equals an uninterrupted run, SIGKILL + resume, and the Ray executor on a local instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from visae.results.table import read_results
from visae.study.config import load_study_config
from visae.study.run import run_study
from visae.study.testing import TINY_STUDY as TINY

sys.path.insert(0, str(Path(__file__).resolve().parent))  # failing.py beside this file (importlib mode)
from failing import FailingExecute, nth_of_kind


def tiny_yaml(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out_dir": "out", **changes}))
    return path


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["backbone", "layer", "sae_id", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_study_config(tiny_yaml(tmp_path_factory.mktemp("clean")))
    plan, summary = run_study(cfg)
    assert summary is not None and summary.ok, summary.describe(plan)
    return Path(cfg.out_dir)


@pytest.mark.slow
def test_rerun_does_nothing_and_results_complete(clean_run: Path) -> None:
    cfg = load_study_config(clean_run.parent / "tiny.yaml")
    plan, summary = run_study(cfg)
    assert summary is not None and summary.ran == [] and len(summary.skipped) == len(plan.jobs)
    df = read_results(clean_run)
    assert df[df["metric"] == "m2"]["sae_id"].nunique() == 5
    for metric in ("m1", "m2", "m3", "m4", "m5", "m6", "raw", "task:retrieval_r1:raw",
                   "task:retrieval_r1:codes"):
        assert metric in set(df["metric"]), metric
    assert (clean_run / "report" / "features.html").stat().st_size > 10_000
    raw = json.loads(next((clean_run / "raw").glob("*/raw.json")).read_text())  # the shared record shape
    assert raw["metric"] == "raw" and raw["seconds"]["total"] > 0 and raw["visae_version"]


@pytest.mark.slow
def test_crash_and_resume_equals_clean_run(clean_run: Path, tmp_path: Path) -> None:
    cfg = load_study_config(tiny_yaml(tmp_path))
    _, summary = run_study(cfg, execute=FailingExecute(nth_of_kind("eval", 2)))
    assert summary is not None and len(summary.failed) == 1
    _, summary = run_study(cfg)
    assert summary is not None and summary.ok
    pd.testing.assert_frame_equal(_sorted(read_results(clean_run)), _sorted(read_results(cfg.out_dir)),
                                  check_exact=False, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_sigkill_and_resume(clean_run: Path, tmp_path: Path) -> None:
    path = tiny_yaml(tmp_path)
    cmd = [sys.executable, "-m", "visae", "study", "run", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # Kill the run once it has started training (some caches done, SAEs not all done).
    out = tmp_path / "out"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((out / "train").glob("*")):
        time.sleep(0.2)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "study.lock").exists() or proc.returncode == 0  # a killed run leaves its (stale) lock
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    pd.testing.assert_frame_equal(_sorted(read_results(clean_run)), _sorted(read_results(out)),
                                  check_exact=False, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_ray_executor_local_instance(clean_run: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    cfg = load_study_config(tiny_yaml(tmp_path, saes=[TINY["saes"][0]], tasks=[],  # type: ignore[index]
                                      metrics=["m1", "m2", "m3"], browser_features=2,
                                      metric_configs={"m1": TINY["metric_configs"]["m1"]}))  # type: ignore[index]
    import failing

    # The first raw job fails once (counted in a file every worker sees): Ray's retry must recover it.
    flaky = FailingExecute.first_runs("raw", 1, Path(cfg.out_dir))
    ray.cloudpickle.register_pickle_by_value(failing)  # workers cannot import the test module by name
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan, summary = run_study(cfg, executor="ray", max_retries=2, execute=flaky)
    finally:
        ray.shutdown()
    assert summary is not None and summary.ok, summary.describe(plan)
    assert (Path(cfg.out_dir) / ".inject-raw").read_text() == "1"  # it did fail once
    ours = _sorted(read_results(cfg.out_dir))
    ref = read_results(clean_run)
    ref = _sorted(ref[(ref["layer"] == 1) & ref["sae_id"].isin(set(ours["sae_id"]))
                      & ref["metric"].isin(set(ours["metric"]))])
    assert ours[["backbone", "sae_id", "metric"]].equals(ref[["backbone", "sae_id", "metric"]])
    # Ray workers run torch single-threaded: float sums differ in the last bits, so compare loosely.
    assert (ours["value"] - ref["value"]).abs().max() < 0.05


@pytest.mark.slow
def test_a_member_retrained_alone_equals_the_clean_run(clean_run: Path, tmp_path: Path) -> None:
    """A killed run may stop after some SAEs of a training group are done: the rest must initialise as in
    the clean run (their seed follows their place in the group, not in what is left)."""
    import shutil

    from safetensors.torch import load_file

    saes = json.loads((clean_run / "results" / "saes.json").read_text())
    entries = saes if isinstance(saes, list) else saes.get("saes", list(saes.values()))
    groups: dict[tuple[str, int, str], list[dict]] = {}
    for e in entries:
        groups.setdefault((e["backbone"], e["layer"], e["family"]), []).append(e)
    member = next(g[-1] for g in groups.values() if len(g) > 1)  # the last of a group of several
    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    shutil.rmtree(out / member["out"])
    cfg = load_study_config(tiny_yaml(tmp_path))
    _, summary = run_study(cfg)
    assert summary is not None and summary.ok
    clean = load_file(clean_run / member["out"] / "model.safetensors")
    again = load_file(out / member["out"] / "model.safetensors")
    for name, tensor in clean.items():
        assert (again[name] == tensor).all(), name
