"""The study folder: ``done.json`` markers (a job is done iff each output folder has one, written last)
and the folder lock (pid + host; a live holder makes a second run fail, a dead one's lock is taken over)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visae.errors import StudyError
from visae.io import atomic_write_json

DONE = "done.json"
LOCK = "study.lock"


def read_done(folder: Path) -> dict[str, Any] | None:
    """The done record of an output folder, or None when absent or unreadable."""
    path = folder / DONE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def output_done(root: Path, output: str, job_id: str | None = None, kind: str | None = None) -> bool:
    """True when ``root/output/done.json`` exists (and names ``job_id`` for fixed-name outputs)."""
    rec = read_done(root / output)
    if rec is None:
        return False
    if job_id is not None and kind in ("collect", "analysis", "report"):
        return bool(rec.get("job_id") == job_id)
    return True


def write_done(folder: Path, record: dict[str, Any]) -> None:
    """Mark a folder complete; called after every other file of the job is in place."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / DONE, {**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            if isinstance(pid, int) and other_host == host and not _pid_alive(pid):
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
