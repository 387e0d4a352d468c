"""Peak resident memory of the processes a benchmark run started.

Linux keeps each process's high-water mark of resident memory in ``/proc/<pid>/status``
(``VmHWM``), so one read just before a process stops gives its peak over its whole life; no
sampling thread is needed. The mark dies with the process, so the orchestrator calls
:meth:`PeakMemory.observe` before every stop and once at the end, and keeps the maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KIB = 1024


def read_status_kib(pid: int) -> dict[str, int]:
    """``VmHWM`` and ``VmRSS`` (KiB) of ``pid``; empty when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values


def group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` (the stack starts each component as a group leader)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not (entry.name.isascii() and entry.name.isdigit()):
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 5 is the pgrp; split after the command name, which may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@dataclass
class Peak:
    """The highest ``VmHWM`` seen for one instance, in MiB, and how many processes its group had."""

    peak_mib: float
    processes: int


class PeakMemory:
    """Keeps, per instance name, the largest resident high-water mark observed.

    For a group with several processes (a launcher and its server), the figure is the largest
    single process's peak: that is the number a container memory limit per process compares to,
    and the launcher of our components is the server itself.
    """

    def __init__(self) -> None:
        self.peaks: dict[str, Peak] = {}

    def observe(self, pids: Mapping[str, int]) -> None:
        for name, pid in pids.items():
            members = group_members(pid) or [pid]
            hwm = max((read_status_kib(p).get("VmHWM", 0) for p in members), default=0)
            if hwm == 0:
                continue
            mib = hwm / KIB
            known = self.peaks.get(name)
            if known is None or mib > known.peak_mib:
                self.peaks[name] = Peak(peak_mib=round(mib, 1), processes=len(members))

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        return {
            name: {"peak_rss_mib": peak.peak_mib, "processes": peak.processes}
            for name, peak in sorted(self.peaks.items())
        }
