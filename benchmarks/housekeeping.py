"""The machine's own work (busy kernel threads, the host's steal time), measured so that a benchmark can
tell a stall it causes from one that warren causes (never imported by warren).

Why: on this workplace's VMs a kernel thread, ``kdamond`` (DAMON's page-out scan: physical-address
monitoring, a 5 s aggregation interval, a quota of 800 ms a second), takes one of the two cores for 15-60 ms
about every 5.2 s. The kernel is built ``CONFIG_PREEMPT_NONE``, and ``nice -10`` did not shorten these
stalls, so nothing interrupts it there. llama.cpp's compute threads meet at a barrier after every operation,
so a decode step that such a burst lands in waits for all of it. Measured in a bare ``llama_decode`` loop
with no server at all (2 threads, 3,000-4,000 one-token steps): in one run 13 of the 14 steps over 3x the
median each had 14-57 ms of ``kdamond`` inside it, and the waiting thread showed the same time as run-queue
delay; in another, one of the six printed had host steal time instead. Neither ``nice -10``, a shorter
OpenMP spin before sleeping, nor moving the waiting thread to the other core by hand shortened them (two
spinning threads on one core are slower still); a passive OpenMP wait does, at 2.5x the time of every step.

What is measured: the CPU time of the kernel threads that have used at least ``BUSY_SHARE`` of one CPU since
boot (here ``kdamond.0`` and ``rcu_preempt``; the other 50-odd kernel threads are idle), read from
``/proc/<pid>/schedstat`` whenever the benchmark asks, plus the steal time in ``/proc/stat`` (the host ran
something else on one of this VM's CPUs; 10 ms ticks): three small reads, so it can be asked at every token.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PF_KTHREAD = 0x00200000  # the task flag (``/proc/<pid>/stat`` field 9) that marks a kernel thread
BUSY_SHARE = 0.0005  # kernel threads below this share of one CPU since boot are not watched


class KernelThreads:
    """The busy kernel threads of this machine, and the CPU seconds they and the host's steal have taken."""

    def __init__(self, busy_share: float = BUSY_SHARE) -> None:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        self.watched: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[6]) & PF_KTHREAD and _runtime(entry.name) / uptime >= busy_share:
                    self.watched[int(entry.name)] = (entry / "comm").read_text().strip()

    def used(self) -> float:
        """CPU seconds the watched kernel threads have run so far (a thread that is gone counts 0), plus the
        seconds the host stole."""
        total = _steal()
        for pid in self.watched:
            with contextlib.suppress(OSError, ValueError):
                total += _runtime(str(pid))
        return total

    def names(self) -> str:
        return ", ".join(sorted(self.watched.values())) or "none"


def _steal() -> float:
    with Path("/proc/stat").open() as stat:
        return int(stat.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


def _runtime(pid: str) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
