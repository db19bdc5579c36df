"""Test-only failure injection: an ``execute`` for the study executors that raises before chosen jobs run.

``FailingExecute(when)`` raises :class:`InjectedFailure` before a job for which ``when(job)`` is true (in
process); ``FailingExecute.first_runs(kind, times, counter_dir)`` fails the first ``times`` runs of one
kind, counted in ``<counter_dir>/.inject-<kind>`` (a file, so that Ray workers in other processes share it).
Pass it as ``run_study(cfg, execute=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visae.study.job import Job
from visae.study.protocol import job_done
from visae.study.stages import run_job


class InjectedFailure(RuntimeError):
    """Raised by the failure-injecting executor."""


@dataclass
class FailingExecute:
    """``execute(job, root, device, plugins)`` that fails where ``when`` says, else runs the job."""

    when: Callable[[Job], bool]

    def __call__(self, job: Job, root: str, device: str, plugins: tuple[str, ...]) -> dict[str, Any]:
        if not job_done(job, root) and self.when(job):
            raise InjectedFailure(f"injected failure in {job.label}")
        return run_job(job, root, device, plugins)

    @classmethod
    def first_runs(cls, kind: str, times: int | None, counter_dir: Path) -> FailingExecute:
        """Fail the first ``times`` runs (None: every run) of jobs of ``kind``."""
        return cls(_FirstRuns(kind, times, counter_dir))


@dataclass
class _FirstRuns:
    kind: str
    times: int | None
    counter_dir: Path

    def __call__(self, job: Job) -> bool:
        if job.kind != self.kind:
            return False
        counter = self.counter_dir / f".inject-{self.kind}"
        n = int(counter.read_text()) if counter.exists() else 0
        if self.times is not None and n >= self.times:
            return False
        counter.parent.mkdir(parents=True, exist_ok=True)
        counter.write_text(str(n + 1))
        return True


def nth_of_kind(kind: str, n: int) -> Callable[[Job], bool]:
    """A ``when`` that is true for the n-th job of ``kind`` this process runs (1-based), once."""
    seen = {"n": 0}

    def when(job: Job) -> bool:
        if job.kind != kind:
            return False
        seen["n"] += 1
        return seen["n"] == n

    return when
