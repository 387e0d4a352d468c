"""The MongoDB commands a piece of code sends, for tests that count its round trips."""

from __future__ import annotations

from pymongo import monitoring


class CommandLog(monitoring.CommandListener):
    """Names of the commands a client sent, in order (pass it in the client's
    ``event_listeners``; ``clear()`` before the part being counted)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def clear(self) -> None:
        self.names.clear()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
