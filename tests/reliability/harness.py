"""Kill-and-resume harness: run a stage in a real child process, SIGKILL it at seeded random times, rerun.

:class:`ForkServer` drives ``driver.py serve`` (one Python process that has imported torch and visae,
forking a fresh child per run). :class:`KillSchedule` spreads kill times over the duration of an
uninterrupted run, shrinking it when a run finishes first. The helpers below compare a resumed output
folder with an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DRIVER = Path(__file__).with_name("driver.py")
TMP_MARK = ".tmp-"


@dataclass
class RunResult:
    """How one child run ended."""

    pid: int
    status: int
    killed: bool
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return not self.killed and os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0

    def text(self) -> str:
        """The child's stdout + stderr."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ForkServer:
    """A ``driver.py serve`` process; :meth:`run` forks one child per call."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.n = 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(DRIVER), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        first = self._read()
        if not first.get("ready"):
            raise RuntimeError(f"fork server did not start: {first}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited (status {self.proc.poll()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(self, stage: str, args: dict[str, Any], kill_after: float | None = None) -> RunResult:
        """Run ``stage`` in a fresh child; SIGKILL it after ``kill_after`` seconds when given."""
        assert self.proc.stdin is not None
        self.n += 1
        log = self.log_dir / f"run{self.n:04d}-{stage}.log"
        req = {"stage": stage, "args": args, "kill_after": kill_after, "log": str(log)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        return RunResult(pid=r["pid"], status=r["status"], killed=r["killed"], seconds=r["seconds"], log=log)

    def close(self) -> None:
        """Stop the server (closing stdin ends its loop)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class KillSchedule:
    """``n`` seeded kill times spread over an uninterrupted run: one uniform fraction in each of n equal
    slices of ``0 … 1``, times the run's duration. A run that finishes before its kill shows the
    duration was overestimated (a loaded machine made the baseline slow), so later kill points shrink to
    it; without that a quieter machine lets most runs finish first and tests no kill at all."""

    def __init__(self, duration_s: float, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        edges = np.linspace(0.0, 1.0, n + 1)
        self.fractions = [float(rng.uniform(lo, hi)) for lo, hi in itertools.pairwise(edges)]
        self.duration_s = duration_s

    def __iter__(self) -> Iterator[float]:
        for u in self.fractions:
            yield u * self.duration_s

    def observe(self, result: RunResult) -> None:
        """Shrink the duration to a run that finished before it was killed."""
        if not result.killed:
            self.duration_s = min(self.duration_s, result.seconds)


def leftover_tmp_files(folder: Path) -> list[Path]:
    """Temporary files (``*.tmp-<pid>*``) a killed writer left behind."""
    return sorted(p for p in folder.rglob(f"*{TMP_MARK}*") if p.is_file())


def poison_tmp_files(folder: Path) -> int:
    """Overwrite every leftover temporary file with garbage, so that reading one changes the outcome."""
    files = leftover_tmp_files(folder)
    for p in files:
        p.write_bytes(b"\xde\xad\xbe\xef" * 64)
    return len(files)


def file_bytes(folder: Path, names: list[str]) -> dict[str, bytes]:
    """Bytes of the named files of ``folder``."""
    return {n: (folder / n).read_bytes() for n in names}


def json_without(path: Path, drop: tuple[str, ...]) -> Any:
    """A JSON file's content without the top-level keys in ``drop`` (timestamps, durations)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        for k in drop:
            data.pop(k, None)
    return data
