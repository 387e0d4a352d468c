"""The console's overview shows the readiness of every service the stack runs, inventory's outbox
relays and the order service's verdict consumer included, each by its stack name (numbered when
an outbox has several relays), and names the check a service fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.console import views
from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings
from stack.config import HOST, SERVICES, StackConfig

TOKEN = "t" * MIN_TOKEN_CHARS


def _console_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ConsoleSettings:
    """The console's settings as its process builds them from ``env`` (and nothing else)."""
    with monkeypatch.context() as patch:
        for name in ConsoleSettings.model_fields:
            patch.delenv(f"CONSOLE_{name.upper()}", raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return ConsoleSettings(token=TOKEN)


def test_the_stack_s_console_probes_every_service_the_stack_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = StackConfig.for_tests(tmp_path)
    settings = _console_settings(config.console_env(), monkeypatch)
    targets = views.readiness_targets(settings)
    # Each service of the stack once, under its own name, at its own port.
    assert sorted(targets) == sorted(
        (name, f"http://{HOST}:{config.port_of(name)}") for name in SERVICES
    )
    assert ("inventory-relay", f"http://{HOST}:{config.port_of('inventory-relay')}") in targets
    assert ("order-verdicts", f"http://{HOST}:{config.port_of('order-verdicts')}") in targets


class _Answers(BaseHTTPRequestHandler):
    """``/<service>/readyz``: 503 naming a failing check for the services in ``not_ready``."""

    not_ready: dict[str, str] = {}

    def do_GET(self) -> None:
        service, _, rest = self.path.strip("/").partition("/")
        if rest != "readyz":
            self.send_error(404)
            return
        check = self.not_ready.get(service)
        checks = {check: False, "kafka": True} if check else {"kafka": True}
        body = json.dumps({"status": "not ready" if check else "ready", "checks": checks})
        self.send_response(503 if check else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the console's answer, not the server's log."""


@pytest.fixture
def services_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_a_not_ready_verdict_consumer_and_inventory_relay_are_shown_next_to_the_others(
    services_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Answers, "not_ready", {"verdicts": "mongo", "irelay2": "indexes"})
    settings = _console_settings(
        {
            "CONSOLE_ORDER_URL": f"{services_url}/order",
            "CONSOLE_RELAY_URLS": json.dumps([f"{services_url}/relay"]),
            "CONSOLE_INVENTORY_URL": f"{services_url}/inventory",
            "CONSOLE_INVENTORY_RELAY_URLS": json.dumps(
                [f"{services_url}/irelay1", f"{services_url}/irelay2"]
            ),
            "CONSOLE_ORDER_VERDICTS_URL": f"{services_url}/verdicts",
            "CONSOLE_EMAIL_URL": f"{services_url}/email",
        },
        monkeypatch,
    )
    shown = {r.name: (r.ready, r.detail) for r in await views.readiness(settings)}
    assert shown == {
        "order": (True, "ready"),
        "relay": (True, "ready"),
        "inventory": (True, "ready"),
        "inventory-relay-1": (True, "ready"),
        "inventory-relay-2": (False, "not ready: indexes"),
        "order-verdicts": (False, "not ready: mongo"),
        "email": (True, "ready"),
    }
