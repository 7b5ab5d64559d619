"""CPU thread defaults that degrade gracefully on a shared machine."""

from __future__ import annotations

import math
import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning for the next parallel region: spinning threads
# take the cores that the working ones (and other people's processes) wait for. libgomp reads
# this once, when torch loads, so it only applies if sctrvae is imported before torch; a value
# set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: cgroup v2 CPU quota of this process's container ("max" or "<quota> <period>").
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: Linux load averages and "running/total" processes.
PROC_LOADAVG = Path("/proc/loadavg")


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota if any.

    Containers (JupyterHub pods, batch jobs) often see every core of the host but may only use
    the quota in ``cpu.max``; torch's default of one thread per visible core then oversubscribes.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cpus or 1)
    if quota != "max":
        cpus = min(cpus or 1, math.ceil(int(quota) / int(period)))
    return max(1, cpus or 1)


def training_threads() -> int:
    """Torch threads for ``train()``: the usable CPUs that other processes leave idle, at least 1.

    Small batches make many short parallel regions; when another process holds one of the cores,
    every region waits for the thread stuck behind it (measured on Kang, 2 cores shared with busy
    processes: 2 threads 4-15× slower per step than 1 without ``OMP_WAIT_POLICY=PASSIVE``, about
    as fast with it; see the Speed section of ``benchmarks/README.md``). Busy cores are the
    larger of the 1-minute load average and the processes running right now (``/proc/loadavg``,
    which follows a change of load at once), minus this process: one thread too few costs far
    less than one too many.
    """
    cpus = available_cpus()
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    try:
        running = int(PROC_LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        running = 0
    others = max(0.0, max(busy, running) - 1.0)
    return max(1, min(cpus, round(cpus - others)))
