"""CPU budget: affinity mask capped by a container's cgroup quota; torch threads fitted to it."""

from __future__ import annotations

import os

import pytest
import torch

from visae import device as device_mod


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.parametrize(("cpu_max", "expected"), [("150000 100000\n", 2), ("50000 100000\n", 1),
                                                   ("100000 100000\n", 1), ("max 100000\n", None)])
def test_cgroup_v2_quota(tmp_path, cpu_max, expected) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    want = _affinity() if expected is None else min(_affinity(), expected)
    assert device_mod.cpu_budget(tmp_path) == want


def test_cgroup_v1_quota_and_no_cgroup(tmp_path) -> None:
    assert device_mod.cpu_budget(tmp_path) == _affinity()  # nothing readable: the affinity mask
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert device_mod.cpu_budget(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert device_mod.cpu_budget(tmp_path) == _affinity()


def test_threads_follow_the_quota_unless_the_user_chose(tmp_path, monkeypatch) -> None:
    before = torch.get_num_threads()
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert device_mod.fit_threads_to_budget(tmp_path) == 2  # the user's choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert device_mod.fit_threads_to_budget(tmp_path) == 1
    finally:
        torch.set_num_threads(before)
