"""Intra-op threads fitted to the CPUs a process may use (affinity, cgroup quota, reservation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mta import threads
from mta.threads import ThreadSettingError, cgroup_cpus, fit_threads, fitted_threads


def test_the_cgroup_quota_reads_v2_then_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    assert cgroup_cpus(v2, v1) is None  # neither file: no quota
    v2.write_text("max 100000\n")
    assert cgroup_cpus(v2, v1) is None
    v2.write_text("150000 100000\n")
    assert cgroup_cpus(v2, v1) == 1.5
    v2.unlink()
    v1[0].write_text("-1\n")
    v1[1].write_text("100000\n")
    assert cgroup_cpus(v2, v1) is None
    v1[0].write_text("50000\n")
    assert cgroup_cpus(v2, v1) == 0.5


def test_the_smallest_limit_wins_and_the_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 3.5)
    assert fitted_threads(env={}) == 3
    assert fitted_threads(1.0, env={}) == 1  # a Ray actor's num_cpus
    assert fitted_threads(0.5, env={}) == 1  # never below one thread
    assert fitted_threads(1.0, env={"OMP_NUM_THREADS": "2"}) == 2
    assert fitted_threads(1.0, env={"MTA_THREADS": "4", "OMP_NUM_THREADS": "2"}) == 4
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert fitted_threads(env={}) == 8
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ThreadSettingError, match="MTA_THREADS must be a positive integer"):
            fitted_threads(env={"MTA_THREADS": bad})


def test_fit_threads_sets_torch_and_honours_the_reservation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("MTA_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    try:
        assert fit_threads() == 2 and torch.get_num_threads() == 2
        assert threads.reserve_cpus(1.0) == 1 and torch.get_num_threads() == 1
        assert fit_threads() == 1  # the reservation stays for the process
        monkeypatch.setenv("MTA_THREADS", "2")
        assert fit_threads() == 2 and torch.get_num_threads() == 2
    finally:
        monkeypatch.setattr(threads, "_reserved", None)
        torch.set_num_threads(before)
