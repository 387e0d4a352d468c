"""Helpers of the docker-compose checks: build the validator, load the file, read settings names.

There is no Docker engine on the machines the suite runs on, so ``docker compose config`` is not
available. The validator is a tiny Go program (tools/composecheck) on compose-go, the loader
docker compose itself uses: it validates against the Compose specification's schema, interpolates,
merges override files, normalises and checks references, and prints the model docker compose would
act on. These tests inspect that model, not the raw YAML, so an anchor or merge key that compose
reads differently from PyYAML cannot fool them.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

from shared.auth import AuthSettings
from shared.settings import InfraSettings, ServiceSettings

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
# docker compose reads COMPOSE_PROFILES from here when no --profile is given.
DOTENV = REPO / ".env"
OVERRIDE_EXAMPLE = REPO / "docker-compose.override.example.yml"
DOCKERFILE = REPO / "Dockerfile"
VALIDATOR_SOURCE = REPO / "tools" / "composecheck"
VALIDATOR_BINARY = REPO / ".stack" / "bin" / "composecheck"

# The image every Python service of the compose file is built as.
PROJECT_IMAGE = "outbox-reference:local"
# What an operator exports before `docker compose up` (the console's token); the validator sees
# nothing else of any environment, so the model does not depend on the shell the tests ran from.
OPERATOR_TOKEN = "operator-token-" + "x" * 32
OPERATOR_ENV: Mapping[str, str] = {"CONSOLE_TOKEN": OPERATOR_TOKEN}

# First build of the validator downloads compose-go and BuildKit's Dockerfile parser through the
# Go module proxy and compiles them: about 40 s of CPU with an empty Go cache (3 min wall clock
# measured on two busy cores); later runs reuse .stack/bin/composecheck.
BUILD_TIMEOUT_SECONDS = 600


def build_validator() -> Path:
    """Build tools/composecheck into .stack/bin once; rebuild when its sources are newer."""
    sources = [p for p in VALIDATOR_SOURCE.iterdir() if p.suffix in {".go", ".mod", ".sum"}]
    newest_source = max(p.stat().st_mtime for p in sources)
    if VALIDATOR_BINARY.exists() and VALIDATOR_BINARY.stat().st_mtime >= newest_source:
        return VALIDATOR_BINARY
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "`go` is not on PATH: the compose checks build tools/composecheck (compose-go, the "
            "loader docker compose uses) with it; install Go 1.24 or newer"
        )
    VALIDATOR_BINARY.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [go, "build", "-o", str(VALIDATOR_BINARY), "."],
        cwd=VALIDATOR_SOURCE,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"building tools/composecheck failed:\n{built.stderr}")
    return VALIDATOR_BINARY


def default_profiles() -> tuple[str, ...]:
    """The profiles ``docker compose up`` runs without ``--profile``: COMPOSE_PROFILES of .env."""
    for line in DOTENV.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "COMPOSE_PROFILES":
            return tuple(p.strip() for p in value.split(",") if p.strip())
    return ()


def run_validator(
    *files: Path,
    as_json: bool = False,
    dockerfile: bool = False,
    env: Mapping[str, str] | None = None,
    profiles: tuple[str, ...] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the validator; ``env`` is all that ``${...}`` interpolation sees (never this
    process's environment); ``profiles`` are active (None: the default profiles of .env, as
    ``docker compose up`` without ``--profile``)."""
    args = [str(build_validator())]
    if as_json:
        args.append("-json")
    if dockerfile:
        args.append("-dockerfile")
    else:
        for profile in default_profiles() if profiles is None else profiles:
            args += ["-profile", profile]
    for name, value in (env or {}).items():
        args += ["-env", f"{name}={value}"]
    args += [str(f) for f in files]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def load_model(
    *files: Path,
    env: Mapping[str, str] | None = None,
    profiles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The project as docker compose would load it from ``files`` (merged in order), with
    ``${...}`` taken from ``env`` (:data:`OPERATOR_ENV` when None) and ``profiles`` active
    (None: the default ones, see :func:`run_validator`)."""
    loaded = run_validator(
        *files, as_json=True, env=OPERATOR_ENV if env is None else env, profiles=profiles
    )
    if loaded.returncode != 0:
        raise AssertionError(f"compose-go refused {[f.name for f in files]}:\n{loaded.stderr}")
    model: dict[str, Any] = json.loads(loaded.stdout)
    return model


@dataclass(frozen=True)
class PythonService:
    """A compose service running one of our entry points from the project image."""

    name: str
    module: str  # "services.order", "stack.demo" ...
    arguments: list[str]
    spec: dict[str, Any]

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment") or {}
        return {key: str(value) for key, value in env.items()}


def python_services(model: dict[str, Any]) -> list[PythonService]:
    """Every service built from our Dockerfile, with the module its command runs."""
    found = []
    for name, spec in model["services"].items():
        if spec.get("image") != PROJECT_IMAGE:
            continue
        command = list(spec.get("command") or [])
        if command[:2] != ["python", "-m"] or len(command) < 3:
            raise AssertionError(f"service {name!r} must run `python -m <module>`, got {command}")
        found.append(PythonService(name, command[2], command[3:], spec))
    return found


def settings_class_of(module: str) -> type[ServiceSettings]:
    """The ServiceSettings subclass of ``services.<name>``: the one defined in its settings.py."""
    settings_module = importlib.import_module(f"{module}.settings")
    classes = [
        value
        for value in vars(settings_module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == settings_module.__name__
    ]
    if len(classes) != 1:
        raise AssertionError(
            f"{settings_module.__name__} must define exactly one ServiceSettings subclass, "
            f"found {[c.__name__ for c in classes]}"
        )
    return classes[0]


def accepted_env_names(settings_class: type[BaseSettings]) -> set[str]:
    """Environment variable names pydantic-settings reads for ``settings_class`` (upper case).

    A field with a ``validation_alias`` is read from the alias names only (the prefix does not
    apply to them); any other field from ``env_prefix`` + its name. Matching is case-insensitive
    unless the class says otherwise, so names are compared upper-cased.
    """
    if settings_class.model_config.get("case_sensitive"):
        raise AssertionError(f"{settings_class.__name__} is case-sensitive; update this helper")
    prefix = str(settings_class.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, AliasPath):
            names.add(str(alias.path[0]).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif field.alias:
            names.add(field.alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


INFRA_ENV_NAMES = accepted_env_names(InfraSettings)

# Settings a service reads besides its own ServiceSettings class: the order API's bearer-token
# check (services/order/__main__.py loads AuthSettings, AUTH_*).
EXTRA_SETTINGS: Mapping[str, tuple[type[BaseSettings], ...]] = {
    "services.order": (AuthSettings,),
}


def env_names_read_by(module: str) -> set[str]:
    """Every environment variable the service ``module`` reads through its settings classes."""
    names = accepted_env_names(settings_class_of(module))
    for extra in EXTRA_SETTINGS.get(module, ()):
        names |= accepted_env_names(extra)
    return names


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def duration_seconds(value: str) -> float:
    """A compose duration ("35s", "1m30s") in seconds."""
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
