"""How many intra-op threads torch may use here: the CPUs this process may really run on.

torch starts one intra-op thread per core it sees, whatever share of them the process
may use. Two Ray actors on two cores then start two threads each, and OpenMP threads
spinning at barriers on oversubscribed cores ran identical maths 4x slower than one
thread (measured on these 2-core machines). So every process that runs torch fits its
thread count to the smallest of: the CPUs in its affinity mask, the cgroup CPU quota,
and the CPUs it reserved (a Ray actor's `num_cpus`). `MTA_THREADS` overrides all three.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mta.errors import MtaError

THREADS_ENV = "MTA_THREADS"
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)
_reserved: float | None = None  # CPUs this process reserved (set by a Ray worker)


class ThreadSettingError(MtaError, ValueError):
    """`MTA_THREADS` is not a positive integer."""


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all cores where the OS has no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpus(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), or None when there is no quota."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = int(v1[0].read_text()), int(v1[1].read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def fitted_threads(reserved_cpus: float | None = None, *, env: dict | None = None) -> int:
    """The intra-op thread count for this process (at least 1).

    `MTA_THREADS` wins, then a user-set `OMP_NUM_THREADS`, then the smallest of the
    affinity mask, the cgroup quota and `reserved_cpus`.

    Args:
        reserved_cpus: CPUs this process reserved from a scheduler (a Ray actor's
            `num_cpus`); None when it reserved none.
        env: the environment to read `MTA_THREADS` from (default `os.environ`).

    Raises:
        ThreadSettingError: `MTA_THREADS` is set but not a positive integer.
    """
    environ = os.environ if env is None else env
    override = environ.get(THREADS_ENV, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ThreadSettingError(f"{THREADS_ENV} must be a positive integer, got {override!r}")
        return int(override)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)  # the user's own OpenMP setting, as torch itself would honour it
    limits: list[float] = [affinity_cpus()]
    quota = cgroup_cpus()
    if quota is not None:
        limits.append(quota)
    if reserved_cpus is not None and reserved_cpus > 0:
        limits.append(reserved_cpus)
    return max(1, math.floor(min(limits)))


def reserve_cpus(cpus: float | None) -> int:
    """Record the CPUs this process reserved (a Ray worker's `num_cpus`) and fit to them."""
    global _reserved
    _reserved = cpus
    return fit_threads()


def fit_threads(reserved_cpus: float | None = None) -> int:
    """Set torch's intra-op threads to `fitted_threads`; returns the count.

    `reserved_cpus` defaults to what `reserve_cpus` recorded for this process. Called
    where a process is about to run a model (`load_base_model`, a Ray worker's start), so
    `mta --help` never imports torch.
    """
    import torch

    threads = fitted_threads(reserved_cpus if reserved_cpus is not None else _reserved)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
