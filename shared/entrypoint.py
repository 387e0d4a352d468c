"""The command line of a worker whose one command is ``run`` (the default): what every consumer
process's ``__main__`` does, written once."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shared.logging import configure_logging
from shared.settings import ServiceSettings, load_settings_or_exit
from shared.tracing import traced

S = TypeVar("S", bound=ServiceSettings)


def run_worker(
    argv: list[str] | None,
    *,
    prog: str,
    service: str,
    run_help: str,
    settings_type: type[S],
    run: Callable[[S], Coroutine[Any, Any, int]],
) -> int:
    """Parse ``argv`` (only ``run``, or nothing), build the settings from the environment (exit 2
    naming each bad variable), configure JSON logging and tracing as ``service``, and run until
    the worker has drained. Returns the worker's exit code."""
    parser = argparse.ArgumentParser(prog=prog)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help=run_help)
    parser.parse_args(argv)
    settings = load_settings_or_exit(settings_type)
    configure_logging(service, settings.log_level)
    with traced(service, settings.otel_exporter_otlp_endpoint):
        return asyncio.run(run(settings))
