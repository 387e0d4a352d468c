"""Sampling profiles of the stack's Python processes during a measured phase (``--profile``).

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;frame count``); this module
starts one recorder per process for a bounded duration and sums the samples into the figures a
reader needs to route a bottleneck: where the process spends its samples by leaf function (self
time) and by function anywhere on the stack (inclusive time).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Samples per second: enough for a 20 s phase to give thousands of samples per process.
RATE = 100


@dataclass
class Recorder:
    name: str
    output: Path
    proc: subprocess.Popen[bytes]
    seconds: float | None
    started: float


def py_spy() -> str | None:
    """The py-spy binary next to this interpreter (the dev extra), or on PATH."""
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start(pids: dict[str, int], seconds: float | None, directory: Path) -> list[Recorder]:
    """One ``py-spy record`` per process, each ending by itself after ``seconds`` (or, with
    ``None``, when :func:`finish` interrupts it)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[dev]')")
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        output = directory / f"{name}.collapsed"
        argv = [
            binary, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
            "--output", str(output), "--nonblocking",
        ]  # fmt: skip
        if seconds is not None:
            argv += ["--duration", str(max(1, int(seconds)))]
        log = open(directory / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        recorders.append(Recorder(name, output, proc, seconds, time.monotonic()))
    return recorders


def finish(recorders: list[Recorder], timeout: float) -> dict[str, Any]:
    """Wait for the recorders (bounded) and summarise each profile."""
    summaries: dict[str, Any] = {}
    for recorder in recorders:
        if recorder.seconds is None and recorder.proc.poll() is None:
            recorder.seconds = time.monotonic() - recorder.started
            recorder.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            recorder.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            recorder.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.proc.wait(10)
        if recorder.output.exists():
            summaries[recorder.name] = summarise(recorder.output, recorder.seconds or 0.0)
            summaries[recorder.name]["file"] = str(recorder.output)
        else:
            summaries[recorder.name] = {"error": f"no profile written (see {recorder.output}.log)"}
    return summaries


def _short(frame: str) -> str:
    # py-spy frames read "function (path/to/file.py:123)"; keep the function and the file tail.
    function, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else path
    return f"{function} ({tail})"


def summarise(path: Path, seconds: float, top: int = 12) -> dict[str, Any]:
    """Busy share (py-spy samples only non-idle threads, so samples / (seconds x rate) is the
    share of the phase the process spent on CPU or in a blocking call), and the top functions
    by self and by inclusive samples."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not (count_text.isascii() and count_text.isdigit()):
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        if frames[-1].startswith(("select (", "poll (", "epoll_wait", "_run_once")):
            idle += count
        leaf[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(f, round(100 * c / total, 1)) for f, c in counter.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "busy_pct": round(100 * total / (seconds * RATE), 1) if seconds > 0 else None,
        "idle_pct": round(100 * idle / total, 1) if total else None,
        "top_self_pct": share(leaf),
        "top_inclusive_pct": share(inclusive),
    }
