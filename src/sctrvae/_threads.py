"""CPU thread defaults that degrade gracefully on a shared machine."""

# at the package root: in train/ its import would first run train/__init__, which loads torch

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Whether torch's OpenMP threads sleep when idle: libgomp reads ``OMP_WAIT_POLICY`` once, when
#: torch loads, so the policy set below applies only if torch is not loaded yet.
PASSIVE_WAIT = (
    "torch" not in sys.modules and os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper() == "PASSIVE"
)
# Idle OpenMP threads sleep instead of spinning for the next parallel region: spinning threads
# take the cores that the working ones (and other people's processes) wait for. A value set by
# the user wins.
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


def training_threads(reproducible: bool = False) -> int:
    """Torch threads for ``train()``.

    With sleeping idle threads (:data:`PASSIVE_WAIT`), every usable CPU: on Kang, 2 cores, two
    threads were faster than one both alone and beside three busy processes (Speed section of
    ``benchmarks/README.md``). With spinning threads (torch loaded before sctrvae, or
    ``OMP_WAIT_POLICY=ACTIVE``), a thread behind another process's work stalls every parallel
    region (2 threads 2× slower than 1 beside busy processes), so only the CPUs idle at this
    moment are used: usable CPUs minus the tasks running now (``/proc/loadavg``) other than this
    one, at least 1. The instantaneous count, not the load average: the load average still
    carries this process's own last minutes, e.g. a previous ``train()``.

    ``reproducible`` (a seeded run): every usable CPU regardless, since the thread count changes
    the order of floating-point sums, and a seeded run must give the same numbers whatever else
    the machine is doing.
    """
    cpus = available_cpus()
    if PASSIVE_WAIT or reproducible:
        return cpus
    try:
        running = int(PROC_LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        running = 1
    return max(1, min(cpus, cpus - (running - 1)))


def requested_threads() -> int | None:
    """Torch threads the user asked for: ``scvi.settings.num_threads``, else ``OMP_NUM_THREADS``."""
    from scvi import settings  # loads torch: not at import time (see OMP_WAIT_POLICY above)

    if settings.num_threads is not None:
        return settings.num_threads
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
    except (KeyError, ValueError):
        return None


@contextmanager
def training_thread_scope(reproducible: bool = False) -> Iterator[int]:
    """Run the block with :func:`requested_threads`, else :func:`training_threads`; restore after.

    Applied anew at every ``train()``: numba (scanpy's parallel functions) shares torch's OpenMP
    runtime and sets its thread count to every core whenever it runs, so a count set once at the
    start of a session does not hold after the first scanpy call. The caller's count is restored
    afterwards, so the user's own torch code keeps its thread count.
    """
    import torch

    before = torch.get_num_threads()
    threads = requested_threads() or training_threads(reproducible)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


#: Arrays of at most this many entries that :func:`few_entries_on_one_thread` keeps on one
#: thread: four times torch's grain size (32,768), above which it splits element-wise work.
ONE_THREAD_ENTRIES = 4 * 32_768


@contextmanager
def few_entries_on_one_thread(n_entries: int) -> Iterator[None]:
    """Run the block on one torch thread if its arrays hold at most :data:`ONE_THREAD_ENTRIES`.

    For runs of cheap operations (gathers, arithmetic) on tens of thousands of entries, such as
    a minibatch's non-zero counts: torch splits any array above 32,768 entries over its
    threads, and with sleeping idle threads (:data:`PASSIVE_WAIT`) each split waits for a
    wake-up that costs more than the work (on a 2-core virtual machine, a log of 40,000
    entries: 9 µs on one thread, 65 µs on two). The thread count is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    if n_entries > ONE_THREAD_ENTRIES or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
