"""Subprocess driver for the kill/resume harness: run stages of visae through their public API.

Two modes:

* ``python driver.py <stage> <json-args>`` runs one stage and exits (``DONE`` on stdout);
* ``python driver.py serve`` is a fork server: it imports everything once, then for each JSON request
  on stdin (``{"stage", "args", "kill_after", "log"}``) forks a child that runs the stage, sends the
  child SIGKILL after ``kill_after`` seconds if it is still running (the child is unreaped until then,
  so its pid cannot have been reused), and answers ``{"pid", "status", "killed", "seconds"}``.
  Every kill is a real SIGKILL of a real process at an arbitrary instruction; forking only saves the
  seconds of importing torch for each of the many runs.

Stages: cache, train, eval, study. The tiny random backbones come from the ``visae.study.testing``
plugin (importable in any process).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

import visae.study.testing  # noqa: F401  (registers tiny-vit-a / tiny-vit-b)


def run_cache(a: dict[str, Any]) -> None:
    from visae.cache.writer import build_cache

    build_cache("tiny-vit-a", a.get("source", "offline:digits"), 1, a["out"], max_images=a.get("n", 48),
                shard_images=a.get("shard_images", 4), batch_size=4, num_workers=0, device="cpu",
                progress=False)


def run_train(a: dict[str, Any]) -> None:
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    specs = [SAESpec(family="batchtopk", d_sae=64, k=4), SAESpec(family="topk", d_sae=32, k=2)]
    cfg = TrainConfig(batch_size=32, checkpoint_every=a.get("checkpoint_every", 3), log_every=1,
                      heldout_batches=2, device="cpu", progress=False, aux_k=8, dead_after_tokens=256)
    train_saes(a["cache"], specs, a["out"], cfg)


def run_eval(a: dict[str, Any]) -> None:
    from visae.metrics.evaluate import evaluate

    evaluate(a["sae"], a["cache"], metrics=a.get("metrics", ["m1", "m2", "m3", "m4"]), out_dir=a["out"],
             configs={"m1": {"min_valid_images": 2}}, device="cpu", group_size=8)


def run_study(a: dict[str, Any]) -> None:
    from visae.study.config import load_study_config
    from visae.study.run import run_study as run

    cfg = load_study_config(a["yaml"])
    plan, summary = run(cfg)
    if summary is None or not summary.ok:
        raise SystemExit(f"study failed: {summary.describe(plan) if summary else 'no summary'}")


STAGES = {"cache": run_cache, "train": run_train, "eval": run_eval, "study": run_study}


def _child(req: dict[str, Any]) -> None:
    """In the forked child: run the stage with stdout/stderr to the log file, then _exit."""
    code = 0
    try:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        STAGES[req["stage"]](req["args"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        print(e, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Fork server loop (see the module docstring)."""
    import importlib

    for name in ("sklearn.datasets", "sklearn.linear_model", "timm", "torchvision", "visae.cache.testing",
                 "visae.cache.writer", "visae.datasets.registry", "visae.metrics.evaluate",
                 "visae.metrics.m1_spatial",
                 "visae.metrics.m2_reconstruction", "visae.metrics.m3_preservation",
                 "visae.metrics.m4_sparse_probing", "visae.sae.train", "visae.study.run"):
        importlib.import_module(name)  # once here, so that each forked run starts in milliseconds

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(req)
        kill_after = req.get("kill_after")
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if kill_after is not None and time.perf_counter() - t0 >= kill_after:
                os.kill(pid, signal.SIGKILL)  # our own unreaped child: the pid is still ours
                _, status = os.waitpid(pid, 0)
                killed = os.WIFSIGNALED(status)  # False when it had just finished on its own
                break
            time.sleep(0.002)
        print(json.dumps({"pid": pid, "status": status, "killed": killed,
                          "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # one thread: CPU training is bitwise reproducible run to run
    if sys.argv[1] == "serve":
        serve()
    else:
        STAGES[sys.argv[1]](json.loads(sys.argv[2]))
        print("DONE", flush=True)
