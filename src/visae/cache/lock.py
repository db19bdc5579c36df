"""One writer per cache or training folder: a ``.lock`` file holding the writer's pid and host."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visae.errors import CacheError
from visae.io import pid_alive


def _holder_alive(other: dict[str, object], host: str) -> bool:
    if other.get("host") != host:
        return True  # another machine's process: we cannot tell, so it counts as alive
    return pid_alive(other.get("pid", -1))


@contextlib.contextmanager
def writer_lock(folder: Path, command: str = "visae cache") -> Iterator[None]:
    """Hold ``folder/.lock`` for the body; a lock left by a dead process on this host is taken over. A live
    holder is a CacheError naming it (``command``: the command that writes such folders, for the message)."""
    path = folder / ".lock"
    me: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                other = {}
            if isinstance(other, dict) and other and _holder_alive(other, me["host"]):
                raise CacheError(f"{folder}: another '{command}' (pid {other.get('pid')} on "
                                 f"{other.get('host')}) is writing this folder; wait for it, or delete "
                                 f"{path} "
                                 "if it is gone") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
