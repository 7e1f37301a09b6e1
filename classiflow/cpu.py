"""The CPU cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores in this process's affinity mask, not ``os.cpu_count()``: under ``taskset``, a container's cpuset
    or one of several parallel test workers, starting a thread per machine core oversubscribes the few
    allowed, and OpenMP's spinning threads then make small models many times slower."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
