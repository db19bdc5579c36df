"""Executors: run a plan's missing jobs in process (local) or as Ray tasks, and report every failure.

A job runs through :func:`visae.study.stages.run_job` (or the ``execute`` function given, with the same
signature, e.g. a test's failure-injecting wrapper), which is idempotent (a job already done returns at
once), so a retried or resumed job never duplicates work. Whatever the executor, the outcome of each job
is read back from the study folder: done, failed (its inputs were done but it is not) or blocked (an input
failed).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visae.errors import StudyError
from visae.study.job import Job, Plan
from visae.study.protocol import job_done
from visae.study.stages import run_job

EventFn = Callable[[str], None]
Execute = Callable[[Job, str, str, tuple[str, ...]], Any]
"""``execute(job, root, device, plugins)``: run one job (default :func:`visae.study.stages.run_job`)."""


@dataclass
class RunSummary:
    """What a run did: jobs run, skipped (already done), failed (with the error) and blocked."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    messages: dict[str, str] = field(default_factory=dict)
    """Failed job id → its error on one line, the whole message kept."""
    logs: dict[str, Path] = field(default_factory=dict)
    """Failed job id → its log file (the full traceback)."""

    @property
    def ok(self) -> bool:
        """True when no job failed or was blocked."""
        return not self.failed and not self.blocked

    def describe(self, plan: Plan) -> str:
        """Human-readable summary, naming each failed job and its error."""
        jobs = plan.by_id()
        lines = [f"{len(self.ran)} job(s) run, {len(self.skipped)} already done, {len(self.failed)} failed, "
                 f"{len(self.blocked)} blocked, in {self.seconds:.1f} s"]
        for jid, err in self.failed.items():
            message = self.messages.get(jid) or one_line(err)
            log = f" (log: {self.logs[jid]})" if jid in self.logs else ""
            lines.append(f"  FAILED {jobs[jid].label} [{jid}]: {message}{log}")
        for jid in self.blocked:
            lines.append(f"  blocked {jobs[jid].label} [{jid}] (an input failed)")
        return "\n".join(lines)


def one_line(error: BaseException | str) -> str:
    """An error as one line with its whole message: ``Type: message`` (a visae error: the message alone).

    From a traceback text, the exception part is everything after the last frame, so a message spanning
    several lines keeps its first part."""
    from visae.errors import VisaeError

    if isinstance(error, BaseException):
        text = str(error) if isinstance(error, VisaeError) else f"{type(error).__name__}: {error}"
    else:
        lines = error.strip().splitlines()
        start = max((i + 1 for i, li in enumerate(lines) if li.startswith("  ")), default=0)
        text = " ".join(lines[start:]) or "(no message)"
    return " ".join(text.split()) or "(no message)"


def _log_failure(root: Path, job: Job, text: str) -> Path:
    from visae.io import atomic_write_text

    path = root / "logs" / f"{job.kind}-{job.id}.log"
    atomic_write_text(path, f"{job.label}\n{text}")
    return path


def run_local(plan: Plan, root: Path, device: str = "auto", max_retries: int = 0,
              on_event: EventFn | None = None, plugins: tuple[str, ...] = (),
              execute: Execute = run_job) -> RunSummary:
    """Run missing jobs one at a time in this process, in plan order; a failure blocks its dependants only."""
    say = on_event or (lambda s: None)
    summary = RunSummary()
    started = time.perf_counter()
    bad: set[str] = set()
    for job in plan.jobs:
        if job_done(job, root):
            summary.skipped.append(job.id)
            continue
        if any(d in bad for d in job.deps):
            bad.add(job.id)
            summary.blocked.append(job.id)
            say(f"blocked  {job.label}")
            continue
        for attempt in range(max_retries + 1):
            t0 = time.perf_counter()
            say(f"run      {job.label}" + (f" (retry {attempt})" if attempt else ""))
            try:
                execute(job, str(root), device, plugins)
            except Exception as e:
                err = traceback.format_exc()
                if attempt < max_retries:
                    say(f"retry    {job.label}: {one_line(e)}")
                    continue
                summary.logs[job.id] = _log_failure(root, job, err)
                summary.failed[job.id] = err
                summary.messages[job.id] = one_line(e)
                bad.add(job.id)
                say(f"FAILED   {job.label}: {one_line(e)} (log: {summary.logs[job.id]})")
            else:
                summary.ran.append(job.id)
                say(f"done     {job.label} ({time.perf_counter() - t0:.1f} s)")
            break
    summary.seconds = time.perf_counter() - started
    return summary


def _ray_execute(execute: Execute, job: Job, root: str, device: str, plugins: tuple[str, ...],
                 *upstream: Any) -> str:
    """Ray task body: the upstream results are passed only so that Ray orders the tasks."""
    del upstream
    execute(job, root, device, plugins)
    return job.id


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """StudyError within ``timeout`` seconds when a ``host:port`` or ``ray://host:port`` address does not
    answer (Ray itself would retry for minutes); 'auto' and other forms are left to Ray."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        if address != "auto" and "://" not in address:
            raise StudyError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                         "('ray start --head'), check the address, or use --address local") from None


def run_ray(plan: Plan, root: Path, address: str | None = "local", device: str = "auto", max_retries: int = 2,
            on_event: EventFn | None = None, init_kwargs: dict[str, Any] | None = None,
            plugins: tuple[str, ...] = (), execute: Execute = run_job) -> RunSummary:
    """Submit every missing job as a Ray task (upstream ObjectRefs as arguments), wait, and read back
    outcomes.

    ``address``: 'local' starts a local Ray instance; otherwise the address of a running cluster
    ('auto', 'ray://host:10001', …). The study folder must be on a path every node sees.
    """
    if address not in (None, "local"):
        check_ray_address(str(address))
    try:
        import ray
    except ImportError as e:
        raise StudyError("the Ray executor needs ray: pip install 'visae[ray]'") from e
    say = on_event or (lambda s: None)
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", False)
        if address not in (None, "local"):
            kwargs["address"] = address
        ray.init(**kwargs)
        started_here = True
    summary = RunSummary()
    started = time.perf_counter()
    try:
        has_gpu = float(ray.cluster_resources().get("GPU", 0)) > 0
        remote = ray.remote(_ray_execute)
        refs: dict[str, Any] = {}
        for job in plan.jobs:
            if job_done(job, root):
                summary.skipped.append(job.id)
                continue
            upstream = [refs[d] for d in job.deps if d in refs]
            opts: dict[str, Any] = {"num_cpus": 1, "max_retries": max_retries, "retry_exceptions": True,
                                    "name": f"visae-{job.kind}-{job.id[:8]}"}
            if job.wants_gpu and has_gpu:
                opts["num_gpus"] = 1
            refs[job.id] = remote.options(**opts).remote(execute, job, str(root), device, plugins, *upstream)
            say(f"submit   {job.label}")
        jobs = plan.by_id()
        pending = list(refs.values())
        ref_to_id = {r: jid for jid, r in refs.items()}
        errors: dict[str, str] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                jid = ref_to_id[r]
                try:
                    ray.get(r)
                    say(f"done     {jobs[jid].label}")
                except Exception as e:
                    errors[jid] = "".join(traceback.format_exception_only(type(e), e))
        for jid in refs:
            job = jobs[jid]
            if job_done(job, root):
                summary.ran.append(jid)
            elif all(job_done(jobs[d], root) for d in job.deps):
                summary.failed[jid] = errors.get(jid, "job did not finish")
                summary.messages[jid] = one_line(summary.failed[jid])
                summary.logs[jid] = _log_failure(root, job, summary.failed[jid])
                say(f"FAILED   {job.label}: {summary.messages[jid]} (log: {summary.logs[jid]})")
            else:
                summary.blocked.append(jid)
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary
