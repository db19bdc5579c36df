"""The job protocol: skip a job when done, run its stage, then write ``done.json`` last; and the folder lock.

A job is done iff each of its output folders holds a ``done.json`` (written after every other file) and
every file it lists is still there, so a killed job leaves at worst an incomplete folder without one, which
the next run redoes, and a deleted result file (``results.parquet``) is rebuilt. The lock (pid +
host) makes a second run on the same folder fail while the first lives; a dead holder's lock is taken over.
What each kind of job does is its stage's business (:mod:`visae.study.stages`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from visae.errors import StudyError
from visae.io import atomic_write_json, pid_alive
from visae.results.layout import DONE_FILE as DONE
from visae.results.layout import LOCK_FILE as LOCK
from visae.study.job import Job


def read_done(folder: Path) -> dict[str, Any] | None:
    """The done record of an output folder, or None when absent or unreadable."""
    path = folder / DONE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    files = data.get("files")
    if isinstance(files, list) and not all(isinstance(f, str) and (folder / f).exists() for f in files):
        return None  # a file the job wrote was deleted since (e.g. results.parquet): the job is not done
    return data


def output_done(root: Path, output: str, job_id: str | None = None) -> bool:
    """True when ``root/output/done.json`` exists (and names ``job_id`` when one is given)."""
    rec = read_done(root / output)
    if rec is None:
        return False
    return job_id is None or bool(rec.get("job_id") == job_id)


def job_done(job: Job, root: Path | str) -> bool:
    """True when every output folder of ``job`` holds its done.json (naming the job, for fixed-name
    outputs)."""
    root = Path(root)
    return all(output_done(root, out, job.id if job.exact_done else None) for out in job.outputs)


def write_done(folder: Path, record: dict[str, Any]) -> None:
    """Mark a folder complete; called after every other file of the job is in place. The record lists the
    folder's files (top level), so that a folder that lost one of them no longer counts as done."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(p.name for p in folder.iterdir() if p.name != DONE and not p.name.startswith("."))
    atomic_write_json(folder / DONE,
                      {**record, "files": files, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


@contextlib.contextmanager
def study_lock(root: Path) -> Iterator[None]:
    """Hold ``root/study.lock`` for the duration; StudyError if another live process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            pid, other_host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and other_host == host and not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its process is gone; take it over
                continue
            if not holder:
                # Lock being written right now, or an empty leftover: give the writer a moment.
                time.sleep(0.2)
                try:
                    holder = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
            raise StudyError(
                f"{path}: the study is locked by pid {holder.get('pid')} on {holder.get('host')} "
                f"(since {holder.get('started')}); wait for that run to finish, or delete the lock file if "
                "that process is gone on another host") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        break
    else:
        raise StudyError(f"{path}: could not take the study lock")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                holder = {}
            if holder.get("pid") == os.getpid():
                path.unlink()


def execute_job(job: Job, root: Path | str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Skip ``job`` when done; else call ``work`` (which writes the job's files) and then each output's
    done.json. Returns the done record (the runner's info under ``info``)."""
    root = Path(root)
    if job_done(job, root):
        return read_done(root / job.outputs[0]) or {}
    t0 = time.perf_counter()
    info = work() or {}
    record = {"job_id": job.id, "kind": job.kind, "label": job.label, "params": job.params,
              "deps": list(job.deps), "seconds": round(time.perf_counter() - t0, 3), "info": info}
    for out in job.outputs:
        if not output_done(root, out, job.id if job.exact_done else None):
            write_done(root / out, record)
    return record
