"""SIGKILL at seeded random times during cache, train, eval and a small study; rerun; the outcome must
equal an uninterrupted run (cache files bitwise, SAE weights bitwise on CPU, metric results equal), no
file listed as complete is ever truncated, and leftover temporary files are never read.

Fast variant: 3 kill points per stage. ``slow``: ≥ 20 per stage.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from harness import ForkServer, KillSchedule, RunResult, json_without, leftover_tmp_files, poison_tmp_files
from safetensors.numpy import load_file

from visae.cache.reader import open_cache
from visae.io import sha256_file

FAST_KILLS = 3
SLOW_KILLS = 20


@dataclass
class Tally:
    """What a kill loop did, for the report (printed with -s)."""

    stage: str
    tried: int = 0
    killed: int = 0
    finished_before_kill: int = 0
    poisoned_tmp: int = 0
    bad: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.stage}: {self.tried} kill points, {self.killed} killed mid-run, "
                f"{self.finished_before_kill} finished first, {self.poisoned_tmp} leftover tmp files "
                f"poisoned, {len(self.bad)} with lost/duplicated data")


def _must_finish(r: RunResult) -> None:
    assert r.ok, f"run failed (status {r.status}):\n{r.text()[-3000:]}"


def _warm_seconds(server: ForkServer, stage: str, args: dict[str, Any], first: RunResult) -> float:
    """Duration of an uninterrupted run: the shorter of the first run and a second, warm one (the first
    child may still import lazily-loaded modules), so kill points fall inside a typical run."""
    r = server.run(stage, args)
    _must_finish(r)
    return min(first.seconds, r.seconds)


# --- cache
# ---------------------------------------------------------------------------------------------------
CACHE_ARGS: dict[str, Any] = {"n": 48, "shard_images": 4}


def _cache_dir(root: Path) -> Path:
    found = [p for p in root.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def _check_partial_cache(root: Path) -> None:
    """After a kill: everything the folder calls complete is intact."""
    if not root.exists() or not any(root.iterdir()):
        return
    folder = _cache_dir(root)
    if (folder / "manifest.json").is_file():
        open_cache(folder, verify=True)
        return
    progress = folder / "progress.json"
    if progress.is_file():
        state = json.loads(progress.read_text())  # atomic: always valid JSON
        for entry in state["shards"]:
            assert sha256_file(folder / entry["file"]) == entry["sha256"], (
                f"{entry['file']} listed but truncated")


def _cache_outcome(root: Path) -> dict[str, Any]:
    folder = _cache_dir(root)
    names = [*sorted(p.name for p in folder.iterdir() if p.name.endswith(".npy")), "image_ids.json",
             "stats.json", "skipped.json"]
    return {"files": {n: (folder / n).read_bytes() for n in names},
            "manifest": json_without(folder / "manifest.json", ("created",)), "name": folder.name}


@pytest.fixture(scope="module")
def cache_baseline(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("cache-base")
    r = server.run("cache", {**CACHE_ARGS, "out": str(root)})
    _must_finish(r)
    return root, _warm_seconds(server, "cache",
                               {**CACHE_ARGS, "out": str(root.with_name(root.name + "-warm"))}, r)


def _kill_loop_cache(server: ForkServer, base: tuple[Path, float], tmp: Path, n: int, seed: int) -> Tally:
    root0, seconds = base
    want = _cache_outcome(root0)
    tally = Tally("cache")
    schedule = KillSchedule(seconds, n, seed)
    for i, t in enumerate(schedule):
        root = tmp / f"k{i}"
        r = server.run("cache", {**CACHE_ARGS, "out": str(root)}, kill_after=t)
        tally.tried += 1
        tally.killed += r.killed
        tally.finished_before_kill += not r.killed
        schedule.observe(r)
        _check_partial_cache(root)
        tally.poisoned_tmp += poison_tmp_files(root)
        _must_finish(server.run("cache", {**CACHE_ARGS, "out": str(root)}))
        got = _cache_outcome(root)
        if got != want:
            tally.bad.append(f"kill at {t:.3f}s: outcome differs")
        assert not leftover_tmp_files(root), leftover_tmp_files(root)
    return tally


def test_cache_kill_resume(server: ForkServer, cache_baseline: tuple[Path, float], tmp_path: Path) -> None:
    tally = _kill_loop_cache(server, cache_baseline, tmp_path, FAST_KILLS, seed=0)
    print(tally.line())
    assert not tally.bad, tally.bad


def test_cache_repeated_kills_then_finish(server: ForkServer, cache_baseline: tuple[Path, float],
                                          tmp_path: Path) -> None:
    """Kill the same folder again and again (each resumed run killed in turn) until a run completes."""
    root0, seconds = cache_baseline
    for j in range(40):
        r = server.run("cache", {**CACHE_ARGS, "out": str(tmp_path)}, kill_after=seconds * 0.3 + 0.02 * j)
        _check_partial_cache(tmp_path)
        if not r.killed:
            _must_finish(r)
            break
    assert j > 0
    assert _cache_outcome(tmp_path) == _cache_outcome(root0)


# --- train
# ---------------------------------------------------------------------------------------------------
SAE_NAMES = ("batchtopk_64_k4", "topk_32_k2")


def _train_outcome(out: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name in SAE_NAMES:
        tensors = load_file(str(out / name / "model.safetensors"))
        res[name] = {"tensors": {k: v.tobytes() for k, v in sorted(tensors.items())},
                     "config": yaml.safe_load((out / name / "config.yaml").read_text())}
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("elapsed_s", None)
    res["log"] = rows
    return res


def _check_partial_train(out: Path) -> None:
    import torch

    if (out / "train_state.pt").is_file():
        torch.load(out / "train_state.pt", weights_only=True)  # never truncated
    for name in SAE_NAMES:
        if (out / name / "config.yaml").is_file():
            from visae.sae.checkpoint import load_sae

            load_sae(out / name)  # both files present and readable once config.yaml (written last) exists
    log = out / "train_log.jsonl"
    if log.is_file():
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()[:-1] if '"step"' in line]
        assert len(steps) == len(set(steps)), "a step is logged twice"


@pytest.fixture(scope="module")
def train_baseline(server: ForkServer, cache_baseline: tuple[Path, float],
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    cache = _cache_dir(cache_baseline[0])
    out = tmp_path_factory.mktemp("train-base")
    r = server.run("train", {"cache": str(cache), "out": str(out)})
    _must_finish(r)
    return cache, out, _warm_seconds(server, "train", {"cache": str(cache), "out": str(out) + "-warm"}, r)


def _kill_loop_train(server: ForkServer, base: tuple[Path, Path, float], tmp: Path, n: int,
                     seed: int) -> Tally:
    cache, out0, seconds = base
    want = _train_outcome(out0)
    tally = Tally("train")
    schedule = KillSchedule(seconds, n, seed)
    for i, t in enumerate(schedule):
        out = tmp / f"k{i}"
        args = {"cache": str(cache), "out": str(out)}
        r = server.run("train", args, kill_after=t)
        tally.tried += 1
        tally.killed += r.killed
        tally.finished_before_kill += not r.killed
        schedule.observe(r)
        _check_partial_train(out)
        tally.poisoned_tmp += poison_tmp_files(out)
        _must_finish(server.run("train", args))
        got = _train_outcome(out)
        for key in want:
            if got[key] != want[key]:
                tally.bad.append(f"kill at {t:.3f}s: {key} differs")
    return tally


def test_train_kill_resume_bitwise(server: ForkServer, train_baseline: tuple[Path, Path, float],
                                   tmp_path: Path) -> None:
    tally = _kill_loop_train(server, train_baseline, tmp_path, FAST_KILLS, seed=1)
    print(tally.line())
    assert not tally.bad, tally.bad


# --- eval
# ----------------------------------------------------------------------------------------------------
METRICS = ["m1", "m2", "m3", "m4"]


def _eval_outcome(out: Path) -> dict[str, Any]:
    return {m: json_without(out / f"{m}.json", ("seconds",)) for m in METRICS}


def _check_partial_eval(out: Path) -> None:
    if out.exists():
        for p in out.glob("*.json"):
            json.loads(p.read_text())  # every result file present is complete


@pytest.fixture(scope="module")
def eval_baseline(server: ForkServer, train_baseline: tuple[Path, Path, float],
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, float]:
    cache, trained, _ = train_baseline
    out = tmp_path_factory.mktemp("eval-base")
    args = {"cache": str(cache), "sae": str(trained / SAE_NAMES[0]), "metrics": METRICS}
    r = server.run("eval", {**args, "out": str(out)})
    _must_finish(r)
    return args, out, _warm_seconds(server, "eval", {**args, "out": str(out) + "-warm"}, r)


def _kill_loop_eval(server: ForkServer, base: tuple[dict[str, str], Path, float], tmp: Path, n: int,
                    seed: int) -> Tally:
    args, out0, seconds = base
    want = _eval_outcome(out0)
    tally = Tally("eval")
    schedule = KillSchedule(seconds, n, seed)
    for i, t in enumerate(schedule):
        out = tmp / f"k{i}"
        r = server.run("eval", {**args, "out": str(out)}, kill_after=t)
        tally.tried += 1
        tally.killed += r.killed
        tally.finished_before_kill += not r.killed
        schedule.observe(r)
        _check_partial_eval(out)
        tally.poisoned_tmp += poison_tmp_files(out) if out.exists() else 0
        _must_finish(server.run("eval", {**args, "out": str(out)}))
        if _eval_outcome(out) != want:
            tally.bad.append(f"kill at {t:.3f}s: results differ")
    return tally


def test_eval_kill_rerun(server: ForkServer, eval_baseline: tuple[dict[str, str], Path, float],
                         tmp_path: Path) -> None:
    tally = _kill_loop_eval(server, eval_baseline, tmp_path, FAST_KILLS, seed=2)
    print(tally.line())
    assert not tally.bad, tally.bad


# --- study
# ---------------------------------------------------------------------------------------------------
STUDY = {
    "name": "kill", "out_dir": "out", "device": "cpu", "plugins": ["visae.study.testing"],
    "backbones": [{"name": "tiny-vit-a"}], "layers": [1],
    "saes": [{"name": "main", "family": "batchtopk", "expansions": [2], "ks": [4, 8]}],
    "data": {"train": {"spec": "offline:digits", "split": "train", "max_images": 40},
             "eval": {"spec": "offline:digits", "split": "test", "max_images": 30}},
    "cache": {"batch_size": 8, "num_workers": 0, "shard_images": 8},
    "train": {"batch_size": 64, "heldout_batches": 2, "log_every": 1, "checkpoint_every": 2},
    "metrics": ["m1", "m2"], "metric_configs": {"m1": {"min_valid_images": 2}},
    "raw_diagnostic": True, "tasks": [], "browser_features": 2,
}


def _study_yaml(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def _study_outcome(out: Path) -> pd.DataFrame:
    from visae.results.table import read_results

    df = read_results(out)
    return df.sort_values([c for c in ("backbone", "layer", "sae_id", "metric")
                           if c in df]).reset_index(drop=True)


def _check_partial_study(out: Path) -> None:
    from visae.study.protocol import read_done

    if not out.exists():
        return
    for done in out.rglob("done.json"):
        assert read_done(done.parent) is not None, f"{done} unreadable"


@pytest.fixture(scope="module")
def study_baseline(server: ForkServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("study-base")
    r = server.run("study", {"yaml": str(_study_yaml(folder))})
    _must_finish(r)
    return folder / "out", r.seconds


def _kill_loop_study(server: ForkServer, base: tuple[Path, float], tmp: Path, n: int, seed: int) -> Tally:
    out0, seconds = base
    want = _study_outcome(out0)
    tally = Tally("study")
    schedule = KillSchedule(seconds, n, seed)
    for i, t in enumerate(schedule):
        yaml_path = _study_yaml(tmp / f"k{i}")
        r = server.run("study", {"yaml": str(yaml_path)}, kill_after=t)
        tally.tried += 1
        tally.killed += r.killed
        tally.finished_before_kill += not r.killed
        schedule.observe(r)
        _check_partial_study(yaml_path.parent / "out")
        tally.poisoned_tmp += poison_tmp_files(yaml_path.parent / "out")
        _must_finish(server.run("study", {"yaml": str(yaml_path)}))
        got = _study_outcome(yaml_path.parent / "out")
        try:
            pd.testing.assert_frame_equal(got, want, check_exact=True)
        except AssertionError as e:
            tally.bad.append(f"kill at {t:.3f}s: {str(e)[:300]}")
        n_rows = len(got.drop_duplicates(subset=[c for c in ("sae_id", "metric", "backbone", "layer")
                                                 if c in got]))
        if n_rows != len(got):
            tally.bad.append(f"kill at {t:.3f}s: duplicated result rows")
    return tally


def test_study_kill_resume(server: ForkServer, study_baseline: tuple[Path, float], tmp_path: Path) -> None:
    tally = _kill_loop_study(server, study_baseline, tmp_path, FAST_KILLS, seed=3)
    print(tally.line())
    assert not tally.bad, tally.bad


# --- long loops
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["cache", "train", "eval", "study"])
def test_kill_loop_long(stage: str, server: ForkServer, request: pytest.FixtureRequest,
                        tmp_path: Path) -> None:
    if stage == "cache":
        tally = _kill_loop_cache(server, request.getfixturevalue("cache_baseline"), tmp_path, SLOW_KILLS, 10)
    elif stage == "train":
        tally = _kill_loop_train(server, request.getfixturevalue("train_baseline"), tmp_path, SLOW_KILLS, 11)
    elif stage == "eval":
        tally = _kill_loop_eval(server, request.getfixturevalue("eval_baseline"), tmp_path, SLOW_KILLS, 12)
    else:
        tally = _kill_loop_study(server, request.getfixturevalue("study_baseline"), tmp_path, SLOW_KILLS, 13)
    print(tally.line())
    assert tally.killed >= SLOW_KILLS // 2, tally.line()
    assert not tally.bad, tally.bad


def test_kill_schedule_spreads_and_shrinks() -> None:
    schedule = KillSchedule(10.0, 20, seed=0)
    pts = list(schedule)
    assert len(pts) == 20 and all(0 <= a < b <= 10 for a, b in itertools.pairwise(pts))
    assert KillSchedule(1.0, 3, 5).fractions == KillSchedule(1.0, 3, 5).fractions
    finished = RunResult(pid=1, status=0, killed=False, seconds=4.0, log=Path("x"))
    schedule.observe(finished)
    assert max(schedule) <= 4.0
    schedule.observe(RunResult(pid=1, status=9, killed=True, seconds=1.0, log=Path("x")))
    assert max(schedule) > 1.0
