"""Keycloak as an optional component of the embedded stack (``python -m stack up --with keycloak``).

The Quarkus distribution (``org.keycloak:keycloak-quarkus-dist``, a 177 MB zip) is resolved from
Maven Central with ``mvn dependency:unpack`` into ``.stack/keycloak/`` once, on the first
``--with keycloak``, and stamped. It runs as ``kc.sh start-dev`` on loopback with an in-memory
database (``--db dev-mem``): every start imports ``realm-outbox.json`` afresh, so stacks never
share state and nothing is left to migrate. Demo users and their passwords are in that file;
:func:`password_grant` is how ``python -m stack token`` and the tests get a token for them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import httpx

from stack.versions import KEYCLOAK_VERSION as KEYCLOAK_VERSION

ARTIFACT: Final = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
REALM_FILE: Final = Path(__file__).resolve().parent / "realm-outbox.json"
# The public client with the password grant (its audience mapper adds the order API).
CLI_CLIENT: Final = "outbox-cli"
# Bounded heap (its default is a share of the machine's memory) and C1 only: like Kafka's, a dev
# server's start-up matters more than its peak throughput (stack/config.py kafka_jvm_opts).
JAVA_HEAP_OPTS: Final = "-Xms64m -Xmx512m"
JAVA_OPTS_APPEND: Final = "-XX:TieredStopAtLevel=1"
# mvn downloads 177 MB on the first run.
RESOLVE_TIMEOUT_SECONDS: Final = 900


class KeycloakError(RuntimeError):
    """Keycloak could not be resolved, or refused a token request (the message says why)."""


def install_root(stack_dir: Path) -> Path:
    """Where the distribution is unpacked: ``<stack dir>/keycloak`` (shared by every stack)."""
    return stack_dir / "keycloak"


def home(stack_dir: Path) -> Path:
    return install_root(stack_dir) / f"keycloak-{KEYCLOAK_VERSION}"


def _stamp(stack_dir: Path) -> Path:
    return install_root(stack_dir) / ".resolved"


def installed(stack_dir: Path) -> bool:
    """Resolved and stamped for :data:`KEYCLOAK_VERSION`."""
    stamp = _stamp(stack_dir)
    return stamp.is_file() and stamp.read_text().strip() == KEYCLOAK_VERSION


def resolve(stack_dir: Path) -> Path:
    """Unpack the distribution from Maven Central (once; later calls return at once)."""
    if installed(stack_dir):
        return home(stack_dir)
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise KeycloakError("Keycloak needs java (17+) and mvn on PATH")
    root = install_root(stack_dir)
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        "mvn", "-q", "-B", "dependency:unpack",
        f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={root}",
        # Without a pom its markers would land in "./${project.basedir}/target".
        f"-DmarkersDirectory={root / '.markers'}",
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=RESOLVE_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0 or not (home(stack_dir) / "bin" / "kc.sh").is_file():
        raise KeycloakError(
            f"`{' '.join(argv)}` failed with code {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-2000:]}"
        )
    _stamp(stack_dir).write_text(KEYCLOAK_VERSION + "\n")
    return home(stack_dir)


def prepare_import(stack_dir: Path) -> None:
    """Put the realm where ``--import-realm`` reads it (``<home>/data/import``)."""
    target = home(stack_dir) / "data" / "import"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REALM_FILE, target / REALM_FILE.name)


def start_argv(stack_dir: Path, host: str, port: int) -> list[str]:
    return [
        str(home(stack_dir) / "bin" / "kc.sh"),
        "start-dev",
        "--http-host", host,
        "--http-port", str(port),
        "--db", "dev-mem",
        "--import-realm",
    ]  # fmt: skip


def java_env() -> dict[str, str]:
    return {"JAVA_OPTS_KC_HEAP": JAVA_HEAP_OPTS, "JAVA_OPTS_APPEND": JAVA_OPTS_APPEND}


def _realm() -> dict[str, Any]:
    realm: dict[str, Any] = json.loads(REALM_FILE.read_text())
    return realm


def demo_users() -> dict[str, str]:
    """``{username: password}`` of the realm file's users (development only)."""
    users: dict[str, str] = {}
    for user in _realm()["users"]:
        passwords = [c["value"] for c in user.get("credentials", []) if c["type"] == "password"]
        if passwords:
            users[user["username"]] = passwords[0]
    return users


def access_token_lifespan() -> int:
    """The realm's access-token lifetime in seconds (Keycloak decides it, not the caller)."""
    return int(_realm()["accessTokenLifespan"])


def password_grant(issuer: str, username: str, timeout: float = 10.0) -> str:
    """An access token for demo user ``username`` by the password grant of :data:`CLI_CLIENT`."""
    users = demo_users()
    if username not in users:
        raise KeycloakError(
            f"{username!r} is not a demo user of the Keycloak realm; known: {', '.join(users)}"
        )
    response = httpx.post(
        f"{issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": CLI_CLIENT,
            "username": username,
            "password": users[username],
        },
        timeout=timeout,
    )
    if response.status_code != 200:
        # Keycloak's error body names the reason (invalid_grant ...), never the password.
        raise KeycloakError(f"Keycloak refused a token for {username!r}: {response.text[:300]}")
    token = response.json().get("access_token")
    if not isinstance(token, str):
        raise KeycloakError("Keycloak's token response has no access_token")
    return token
