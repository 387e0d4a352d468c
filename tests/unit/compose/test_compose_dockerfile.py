"""The service image: installed like the README and Makefile install it, minus the dev extra."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet

from tests.unit.compose.compose_helpers import (
    COMPOSE_FILE,
    DOCKERFILE,
    PROJECT_IMAGE,
    REPO,
    load_model,
    run_validator,
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    grouped: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            grouped.append([])
        if grouped:
            grouped[-1].append(instruction)
    return grouped


def pip_install_commands(text: str) -> list[list[str]]:
    """Every `pip install ...` in shell text, as argument lists (after `install`)."""
    found = []
    for match in re.finditer(r"pip install ([^\n;&|]*)", text):
        found.append(shlex.split(match.group(1)))
    return found


def _base_image(instructions: list[Instruction]) -> str:
    args = {
        i.arguments.split("=", 1)[0]: i.arguments.split("=", 1)[1]
        for i in instructions
        if i.keyword == "ARG" and "=" in i.arguments
    }
    first_from = next(i for i in instructions if i.keyword == "FROM").arguments.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], first_from)


def test_dockerfile_parses_and_passes_buildkits_checks() -> None:
    # BuildKit's own parser (the one `docker build` uses), its parse-time build checks as errors.
    checked = run_validator(DOCKERFILE, dockerfile=True)
    assert checked.returncode == 0, checked.stderr


def test_dockerfile_check_rejects_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim AS build\nRUNN pip install .\n")
    checked = run_validator(broken, dockerfile=True)
    assert checked.returncode != 0
    assert "unknown instruction" in checked.stderr


def test_image_is_multi_stage_on_slim_python_within_requires_python() -> None:
    instructions = dockerfile_instructions()
    assert len(stages(instructions)) >= 2, "build and runtime stages expected"
    base = _base_image(instructions)
    match = re.fullmatch(r"python:(\d+\.\d+)-slim(?:-\w+)?", base)
    assert match, f"base image {base!r} is not python:X.Y-slim"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(match.group(1) + ".0"), (base, requires)


def test_image_runs_as_a_non_root_user() -> None:
    runtime = stages(dockerfile_instructions())[-1]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage never switches away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_image_installs_the_package_with_constraints_and_without_the_dev_extra() -> None:
    # Comments are dropped: the Dockerfile explains in prose why the dev extra stays out.
    text = "\n".join(f"{i.keyword} {i.arguments}" for i in dockerfile_instructions())
    installs = pip_install_commands(text)
    assert installs == [["-c", "constraints.txt", "."]], installs
    # SecantusDB (GPL-2.0) is the dev extra's test stand-in for mongod: never in the image.
    assert "[dev]" not in text and "secantus" not in text.lower()
    runtime_deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in runtime_deps if d.lower().startswith("secantus")]


def test_image_uses_the_same_constraints_file_as_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text()
    project_installs = [args for args in pip_install_commands(makefile) if "-c" in args]
    assert project_installs, "the Makefile installs the project without a constraints file"
    for args in project_installs:
        assert args[args.index("-c") + 1] == "constraints.txt", args
    assert (REPO / "constraints.txt").is_file()


def test_every_file_the_image_copies_exists_and_is_in_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".stack", "tests"} <= ignored
    for instruction in dockerfile_instructions():
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        sources = [a for a in shlex.split(instruction.arguments) if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert Path(source).parts[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


# Imported in a fresh interpreter where the dev extra's modules cannot be imported, which is what
# the image has: a runtime import of SecantusDB, aiosmtpd or pytest would crash the container.
_IMPORT_WITHOUT_DEV_EXTRA = """
import importlib, importlib.abc, importlib.metadata, re, sys, tomllib
dev = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
dev_dists = {re.split(r"[<>=!~\\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in dev}
blocked = {
    module
    for module, dists in importlib.metadata.packages_distributions().items()
    if any(d.lower().replace("_", "-") in dev_dists for d in dists)
}

class BlockDevExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} belongs to the dev extra, which the image does not have")
        return None

sys.meta_path.insert(0, BlockDevExtra())
for module in sys.argv[1:]:
    importlib.import_module(module)
print("imported", *sys.argv[1:])
"""


def test_image_entry_points_import_without_the_dev_extra() -> None:
    commands = [
        spec["command"]
        for spec in load_model(COMPOSE_FILE)["services"].values()
        if spec.get("image") == PROJECT_IMAGE
    ]
    modules = sorted({c[2] for c in commands})
    # `python -m pkg` runs pkg/__main__.py; importing it under its own name does not call main().
    importable = [
        f"{m}.__main__" if (REPO / m.replace(".", "/") / "__main__.py").exists() else m
        for m in modules
    ]
    imported = subprocess.run(
        [sys.executable, "-c", _IMPORT_WITHOUT_DEV_EXTRA, *importable],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
