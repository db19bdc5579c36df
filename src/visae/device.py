"""Device selection: CUDA when present, else Apple MPS, else CPU; overridable everywhere."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from visae.errors import ConfigError

_FIX = "use --device cpu (or auto: the best device this machine has)"


def parse_device(requested: str) -> torch.device:
    """A ``torch.device`` from a device string; ConfigError naming the string when torch cannot parse it."""
    try:
        return torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {requested!r}: not a device name; use auto, cpu, cuda, cuda:1 or "
                          "mps") from None


def check_device_string(value: str) -> str:
    """Validator for config fields: ``auto`` or a string torch can parse (availability is checked at use)."""
    if value not in ("", "auto"):
        try:
            parse_device(value)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("device ")) from None
    return value


def _check_available(dev: torch.device, requested: str) -> None:
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU or NVIDIA driver is visible to torch")
            raise ConfigError(f"device {requested!r}: this machine cannot serve it ({why}); {_FIX}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {requested!r}: this machine has {n} CUDA device(s), cuda:0 … "
                              f"cuda:{n - 1}; pick one of them or {_FIX}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {requested!r}: this machine cannot serve it (Apple MPS is not "
                              f"available); {_FIX}")
    elif dev.type not in ("cpu", "meta"):
        module = getattr(torch, dev.type, None)
        available = getattr(module, "is_available", None)
        if callable(available) and not available():
            raise ConfigError(f"device {requested!r}: this machine cannot serve it ({dev.type} is not "
                              f"available); {_FIX}")


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"``/None to the best available device; check that any other device exists here.

    ConfigError (naming the device and the fix) for a string torch cannot parse or a device this machine
    cannot serve (``cuda`` without a GPU, ``cuda:3`` on a one-GPU machine, ``mps`` off Apple silicon).
    """
    if isinstance(requested, torch.device):
        _check_available(requested, str(requested))
        return requested
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = parse_device(requested)
    _check_available(dev, requested)
    return dev


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by a cgroup CPU quota (v2 ``cpu.max``, else v1 ``cfs_quota_us``); None: no quota."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def cpu_budget(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may really use: its affinity mask (what a scheduler such as SLURM grants), capped by
    a container's CPU quota, which neither ``os.cpu_count`` nor torch's default thread count sees."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(root)
    return max(1, min(n, math.ceil(quota - 1e-9)) if quota is not None else n)


def fit_threads_to_budget(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Lower torch's intra-op threads to :func:`cpu_budget` unless the user chose a count
    (``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``); returns the thread count in effect.

    More threads than granted CPUs make every parallel operation wait for a descheduled thread: measured
    here, two threads sharing one busy core made the evaluation stream several times slower than one.
    """
    if not any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        budget = cpu_budget(root)
        if torch.get_num_threads() > budget:
            torch.set_num_threads(budget)
    return torch.get_num_threads()
