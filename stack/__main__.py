"""``python -m stack``: run the embedded stack from a terminal.

    up [--detach] [--with jaeger|keycloak] [--kafka-brokers N] [COMPONENT ...]
                                    start (default: infra, every service that exists and the
                                    console; --with jaeger adds the trace backend, --with
                                    keycloak the identity provider; N Kafka nodes kafka,
                                    kafka-2 ... with RF min(N, 3)), wait ready
    down [--wipe]                   stop everything (services first); --wipe deletes all data
    status [--json]                 running / ready / pid / port / log of every component
    logs COMPONENT [-n N] [-f]      the component's log
    start|stop|kill|restart NAME    one component (kill = SIGKILL), for failure injection
    pause|resume NAME               SIGSTOP / SIGCONT one component (a frozen process)
    token [--ttl S] [--role R] USER ...
                                    one bearer token per user, one per line, from the running
                                    stack's issuer (Keycloak's realm when it runs)

NAME is a component, an extra service instance (relay-2) or one node of a Kafka cluster
(kafka-2).

Without ``--detach``, ``up`` stays in the foreground and Ctrl-C (or SIGTERM) stops every
component cleanly. ``--root`` / ``STACK_ROOT`` and ``STACK_<NAME>_PORT`` move the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from shared.auth import SUPPORT_ROLE
from stack import keycloak
from stack.config import (
    ALL,
    INFRA,
    KNOWN,
    MAX_KAFKA_BROKERS,
    OPERATOR,
    REPO_ROOT,
    SERVICES,
    StackConfig,
    kafka_brokers_argument,
    service_process,
)
from stack.gotools import JAEGER, GoToolError, ensure
from stack.issuer import load_or_create_key, mint_token
from stack.supervisor import (
    CONSOLE_TOKEN_ENV,
    Stack,
    StackError,
    component_of,
    console_token,
    service_exists,
    tail,
)

DEFAULT_TOKEN_TTL_SECONDS = 3600
# A development token for longer than a month is a credential someone will forget.
MAX_TOKEN_TTL_SECONDS = 30 * 24 * 3600


class _StopRequested(BaseException):
    """Raised from the SIGTERM/SIGINT handler so a start-up in progress unwinds and cleans up."""


def _config(args: argparse.Namespace) -> StackConfig:
    root = Path(args.root) if args.root is not None else None
    return StackConfig.default(kafka_brokers=getattr(args, "kafka_brokers", None), root=root)


def _print_status(stack: Stack) -> None:
    rows = [("COMPONENT", "STATE", "PID", "PORT", "LOG")]
    for name, entry in stack.status(probe=True).items():
        if entry["paused"]:
            state = "paused"
        elif entry["running"]:
            state = "ready" if entry["ready"] else "starting/unready"
        else:
            state = "stopped"
        rows.append((name, state, str(entry["pid"] or "-"), str(entry["port"]), entry["log"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def console_banner(config: StackConfig, token: str) -> str:
    """Where the console is and how to sign in: the token itself for the stack's own
    (generated, kept owner-only), never a token the operator set in ``CONSOLE_TOKEN``."""
    url = f"http://127.0.0.1:{config.port_of('console')}/"
    if os.environ.get(CONSOLE_TOKEN_ENV):
        return f"console: {url} (sign in with your {CONSOLE_TOKEN_ENV})"
    return (
        f"console: {url} (sign in with the token below; kept in {config.console_token_path}, "
        f"mode 0600)\n  {token}"
    )


def _default_components() -> list[str]:
    missing = [s for s in SERVICES + OPERATOR if not service_exists(s)]
    for name in missing:
        where = service_process(name).main_path.relative_to(REPO_ROOT)
        print(f"note: {where} does not exist yet; not starting {name}", file=sys.stderr)
    return [*INFRA, *(s for s in SERVICES + OPERATOR if s not in missing)]


def cmd_up(stack: Stack, args: argparse.Namespace) -> int:
    names = args.components or _default_components()
    names += [n for n in args.with_ or [] if n not in names]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        print(f"error: unknown component(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        return 2
    if "keycloak" in names and not keycloak.installed(REPO_ROOT / ".stack"):
        print(f"resolving Keycloak {keycloak.KEYCLOAK_VERSION} from Maven Central (once; 177 MB)")
        try:
            keycloak.resolve(REPO_ROOT / ".stack")
        except keycloak.KeycloakError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if "jaeger" in names and not JAEGER.installed():
        print(f"building Jaeger {JAEGER.version} from the Go module proxy (once; a few minutes)")
        try:
            ensure(JAEGER)
        except GoToolError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    started_at = time.monotonic()

    def _raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _StopRequested(signal.Signals(signum).name)

    if not args.detach:
        signal.signal(signal.SIGINT, _raise_stop)
        signal.signal(signal.SIGTERM, _raise_stop)
    try:
        stack.up(names)
    except StackError as error:
        print(f"stack up failed: {error}", file=sys.stderr)
        return 1
    except _StopRequested:
        print("interrupted during start-up; stopped what was started", file=sys.stderr)
        return 130
    print(f"ready in {time.monotonic() - started_at:.1f}s ({', '.join(names)})")
    _print_status(stack)
    if "console" in names:
        # Once per start-up, after the status table, where it is not scrolled away.
        print(console_banner(stack.config, console_token(stack.config)[0]))
    if args.detach:
        print("detached: `python -m stack down` stops it")
        return 0
    print("running in the foreground; Ctrl-C stops every component")
    return _supervise(stack, names)


def _supervise(stack: Stack, names: list[str]) -> int:
    reported: set[str] = set()
    stop = threading.Event()
    try:
        while not stop.wait(1.0):  # liveness report interval
            for name in names:
                if name not in reported and not stack.is_running(name):
                    reported.add(name)
                    print(
                        f"{name} is not running any more; last log lines "
                        f"({stack.logs_path(name)}):\n{tail(stack.logs_path(name), 10)}",
                        file=sys.stderr,
                    )
                elif name in reported and stack.is_running(name):
                    reported.discard(name)
                    print(f"{name} is running again", file=sys.stderr)
    except _StopRequested as why:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\n{why}: stopping every component ...", file=sys.stderr)
    stack.down()
    print("stopped")
    return 0


def cmd_down(stack: Stack, args: argparse.Namespace) -> int:
    stack.down(wipe=args.wipe)
    print("stopped" + (f"; data under {stack.config.data_root} removed" if args.wipe else ""))
    return 0


def cmd_status(stack: Stack, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(stack.status(probe=True), indent=2))
    else:
        _print_status(stack)
    return 0


def cmd_logs(stack: Stack, args: argparse.Namespace) -> int:
    path = stack.logs_path(args.component)
    if not path.exists():
        print(f"{args.component}: no log at {path}", file=sys.stderr)
        return 1
    print(tail(path, args.lines))
    if not args.follow:
        return 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(0, 2)
            while True:
                line = f.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)  # follow mode: poll the file for appended lines
    except KeyboardInterrupt:
        return 0


def _token_user(text: str) -> str:
    """A token's subject from the command line: printable, no spaces, at most 255 characters."""
    if not text or len(text) > 255 or not text.isprintable() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(
            f"a user name of 1-255 printable characters without spaces, not {text!r}"
        )
    return text


def _ttl_seconds(text: str) -> int:
    ttl = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= ttl <= MAX_TOKEN_TTL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"a whole number of seconds from 1 to {MAX_TOKEN_TTL_SECONDS}, not {text!r}"
        )
    return ttl


def cmd_token(stack: Stack, args: argparse.Namespace) -> int:
    """Print one bearer token per user for the issuer the stack's order API trusts."""
    config = stack.config
    if stack.is_running("keycloak"):
        lifespan = keycloak.access_token_lifespan()
        if args.roles:
            print(
                "error: Keycloak's tokens carry the roles its realm assigns; --role is for the "
                "development issuer",
                file=sys.stderr,
            )
            return 2
        if args.ttl not in (None, lifespan):
            print(
                f"error: Keycloak's tokens last the realm's accessTokenLifespan ({lifespan} s, "
                f"{keycloak.REALM_FILE.name}); --ttl cannot change it",
                file=sys.stderr,
            )
            return 2
        try:
            tokens = [keycloak.password_grant(config.keycloak_issuer, u) for u in args.users]
        except (keycloak.KeycloakError, httpx.HTTPError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    else:
        if not stack.is_running("issuer") or not config.issuer_key_path.is_file():
            print(
                "error: the stack's issuer is not running: `python -m stack up` starts it "
                "(or `python -m stack up --with keycloak` for Keycloak)",
                file=sys.stderr,
            )
            return 1
        key = load_or_create_key(config.issuer_key_path)
        ttl = args.ttl or DEFAULT_TOKEN_TTL_SECONDS
        tokens = [
            mint_token(
                key, issuer=config.issuer_url, subject=u, ttl_seconds=ttl, roles=args.roles or ()
            )
            for u in args.users
        ]
    for token in tokens:
        print(token)
    return 0


def cmd_one(stack: Stack, args: argparse.Namespace) -> int:
    name: str = args.component
    action = args.command
    if action == "start":
        stack.start(component_of(name), instance=None if name in ALL else name)
    else:
        getattr(stack, action)(name)
    print(f"{name}: {action} done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stack",
        description="The embedded stack: real MongoDB (SecantusDB), Kafka, Redis, an SMTP sink "
        "and the six service processes (order API, two relays, inventory, order-verdicts, "
        "email) as local processes.",
    )
    parser.add_argument("--root", help="stack directory (default: STACK_ROOT or <repo>/.stack)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start and wait until ready")
    up.add_argument("--detach", action="store_true", help="return once ready")
    up.add_argument("components", nargs="*", metavar="COMPONENT", help=", ".join(ALL))
    up.add_argument(
        "--with",
        dest="with_",
        action="append",
        choices=["jaeger", "keycloak"],
        help="also start an optional component: jaeger (traces; UI on 127.0.0.1:16686), "
        "keycloak (the identity provider the order API then trusts; 127.0.0.1:8180, ~30 s)",
    )
    up.add_argument(
        "--kafka-brokers",
        type=kafka_brokers_argument,
        metavar="N",
        help="Kafka nodes (combined broker + controller): 1 (default) or a cluster of up to "
        f"{MAX_KAFKA_BROKERS}, named kafka, kafka-2 ...; topics get replication factor "
        "min(N, 3) and min.insync.replicas a majority of it",
    )
    down = commands.add_parser("down", help="stop everything")
    down.add_argument("--wipe", action="store_true", help="also delete all data")
    status = commands.add_parser("status", help="show what runs")
    status.add_argument("--json", action="store_true")
    logs = commands.add_parser("logs", help="print a component's log")
    logs.add_argument("component")
    logs.add_argument("-n", "--lines", type=int, default=100)
    logs.add_argument("-f", "--follow", action="store_true")
    for action in ("start", "stop", "kill", "restart", "pause", "resume"):
        one = commands.add_parser(action, help=f"{action} one component")
        one.add_argument("component")
    token = commands.add_parser(
        "token", help="print a bearer token per user from the running stack's issuer"
    )
    token.add_argument("users", nargs="+", metavar="USER", type=_token_user)
    token.add_argument(
        "--ttl",
        type=_ttl_seconds,
        metavar="SECONDS",
        help=f"lifetime (default {DEFAULT_TOKEN_TTL_SECONDS}; Keycloak: its realm decides)",
    )
    token.add_argument(
        "--role",
        dest="roles",
        action="append",
        metavar="ROLE",
        help=f"a realm role in the token (e.g. {SUPPORT_ROLE}: may read every order); "
        "development issuer only",
    )
    args = parser.parse_args(argv)

    stack = Stack(_config(args))
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "logs": cmd_logs,
        "token": cmd_token,
    }
    try:
        return handlers.get(args.command, cmd_one)(stack, args)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
