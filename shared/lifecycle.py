"""Signal handling for worker processes: SIGTERM/SIGINT set an event; the worker drains."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger(__name__)

# Exit code of a test failpoint (``*_FAILPOINT``): distinct from 0, 1 (fatal error), 2 (usage),
# 137 and 143 (killed, terminated), so a test can tell "crashed where asked" from anything else.
FAILPOINT_EXIT_CODE = 86


def exit_at_failpoint(armed: str | None, name: str) -> None:
    """Exit the process at once, without any cleanup (like a ``kill -9``), when ``armed`` (the
    service's ``failpoint`` setting, test-only) names the failpoint ``name`` reached here."""
    if armed == name:
        log.warning("failpoint hit, exiting", extra={"failpoint": name})
        logging.shutdown()
        os._exit(FAILPOINT_EXIT_CODE)


def stop_event_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT; a second one exits at once.

    The worker watches the event, finishes or hands back its in-flight work within its drain
    budget, commits and closes its clients. A second signal means the operator lost patience.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def _on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning(
                "second signal, exiting without drain",
                extra={"signal": signal.Signals(signum).name},
            )
            raise SystemExit(128 + signum)
        log.info("stop requested, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum)
    return stop
