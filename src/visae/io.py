"""Crash-safe file writing and content hashing shared by every stage.

Protocol: write to ``<name>.tmp-<pid>``, flush and fsync, then ``os.replace`` onto the final name and
fsync the folder. A reader therefore sees either the old file, or the complete new one, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(dir_path: Path) -> None:
    """Make a rename inside ``dir_path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(dir_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path, tmp_path: Path) -> Iterator[None]:
    """Run the body (which writes and fsyncs ``tmp_path``), then rename it onto ``path``; always clean up."""
    try:
        yield
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise _disk_full(path, e) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with _replacing(path, tmp_path), open(tmp_path, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _disk_full(path: Path, err: OSError) -> Exception:
    from visae.errors import DiskFullError

    exc = DiskFullError(f"{path}: the disk is full ({os.strerror(err.errno or errno.ENOSPC)}) while writing "
                        "this file; it was not written, files already complete are intact. Free some space "
                        "and rerun the same command to continue")
    exc.errno = err.errno
    return exc


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_with(path: Path | str, write: Callable[[Path], None]) -> None:
    """Let ``write(tmp_path)`` produce a file (e.g. ``np.save``), then move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.tmp-{os.getpid()}{path.suffix}")
    with _replacing(path, tmp_path):
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())


def pid_alive(pid: object, invalid_is_alive: bool = False) -> bool:
    """Whether a process with this id runs on this host (one owned by another user counts as alive);
    a value that is no valid pid (not an integer, or ≤ 0, which would address process groups) counts as
    ``invalid_is_alive``."""
    try:
        number = int(pid)  # type: ignore[call-overload]
        if number <= 0:
            return invalid_is_alive
        os.kill(number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, TypeError):
        return invalid_is_alive
    return True


def remove_leftover_tmp(folder: Path | str, recursive: bool = False) -> list[Path]:
    """Delete temporary files (``<name>.tmp-<pid>…``) left in ``folder`` by writers that were killed.

    A file whose pid is alive on this machine (this process included) is kept: it may be being written.
    Readers never
    open these names; this only reclaims their space. Returns the files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob("*.tmp-*") if recursive else folder.glob("*.tmp-*"):
        m = re.search(r"\.tmp-(\d+)", p.name)
        if m is None or not p.is_file() or pid_alive(m.group(1), invalid_is_alive=True):
            continue  # ours or a live writer's: keep
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def hash_json(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def safe_join(root: Path | str, relative: str) -> Path:
    """Join ``relative`` under ``root``, refusing absolute paths and ``..`` that would escape ``root``."""
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        from visae.errors import VisaeError

        raise VisaeError(f"path {relative!r} points outside the output folder {root_path}")
    return candidate


def visae_home() -> Path:
    """visae's own cache folder (converted offline weights, …): ``$VISAE_HOME``, else ``~/.cache/visae``."""
    env = os.environ.get("VISAE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "visae"


def check_output_dir(path: Path | str, what: str = "output folder") -> Path:
    """Refuse an output folder that is a file (or lies under one) before anything is computed or written."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                from visae.errors import ConfigError

                where = "is a file" if q == p else f"lies under {q}, which is a file"
                raise ConfigError(f"{what} {p}: {where}, not a folder; give a folder path (it is created if "
                                  "missing) or move the file away")
            break
    return p
