"""CPU accounting for the benchmarks (Linux /proc): who used the machine's cores during a run.

On a shared 2-core machine a latency figure means little without knowing whether the measured
process had a core to itself: `CpuWindow` reads the CPU time of the processes of interest and
the whole machine's busy time at the start and end of a run, and reports each as a share of one
core (100 % = one core fully busy) over the run's wall time.
"""

from __future__ import annotations

import os
import time
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None


def machine_s() -> tuple[float | None, float | None]:
    """(busy, steal) CPU seconds of all cores since boot, from one read of /proc/stat.

    busy: not idle nor waiting for I/O, steal included (guest time is already in user time).
    steal: time the hypervisor gave this machine's cores to other guests: a virtual core that
    was 'running' our code but not getting a real one (a busy host)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, None
    if len(values) < 5:
        return None, None
    steal = values[7] / _TICK if len(values) > 7 else None
    return (sum(values[:8]) - values[3] - values[4]) / _TICK, steal


class CpuWindow:
    """``with CpuWindow({"gateway": os.getpid(), ...}) as w: ...`` then ``w.summary()``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self._start: dict[str, float | None] = {}
        self._end: dict[str, float | None] = {}
        self._wall = 0.0

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = self._read()
        self._wall = time.perf_counter() - self._wall

    def _read(self) -> dict[str, float | None]:
        busy, steal = machine_s()
        return {k: process_cpu_s(p) for k, p in self.pids.items()} | {"machine": busy, "steal": steal}

    def summary(self) -> dict[str, Any]:
        """Percent of one core per process, the machine's busy cores, and what others used."""
        out: dict[str, Any] = {"wall_s": round(self._wall, 3), "cpus": os.cpu_count()}
        ours = 0.0
        for key, began in self._start.items():
            ended = self._end.get(key)
            if began is None or ended is None or self._wall <= 0:
                out[f"{key}_pct"] = None
                continue
            pct = (ended - began) / self._wall * 100
            out[f"{key}_pct"] = round(pct, 1)
            if key not in ("machine", "steal"):
                ours += pct
        machine = out.get("machine_pct")
        steal = out.get("steal_pct") or 0.0
        # others: busy time that was neither ours nor taken by the hypervisor (other local processes)
        out["others_pct"] = None if machine is None else round(max(0.0, machine - ours - steal), 1)
        return out
