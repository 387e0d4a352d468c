"""Go programs the project builds from the Go module proxy into ``.stack/bin``: promtool (the
alert-rule checks), Jaeger (the optional trace backend of ``python -m stack up --with jaeger``)
and Toxiproxy (the fault proxy of the failure-injection suite).

    python -m stack.gotools promtool jaeger     # install what is missing or out of date

Each binary gets a stamp file beside it naming the version it was built from; a binary whose
stamp matches is reused (building Jaeger takes minutes). ``make setup`` installs promtool;
the trace test installs Jaeger itself the first time it runs, so ``make demo`` never pays for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from stack.config import REPO_ROOT
from stack.versions import JAEGER_MODULE_VERSION, PROMETHEUS_MODULE_VERSION, TOXIPROXY_VERSION

BIN_DIR: Final = REPO_ROOT / ".stack" / "bin"
# A throwaway module per tool for `go get -tool` (Jaeger's go.mod has replace directives, which
# `go install module@version` refuses).
SCRATCH_DIR: Final = REPO_ROOT / ".stack" / "gobuild"
# Cold builds measured on two busy cores: promtool ~3 min, Jaeger ~4-6 min.
BUILD_TIMEOUT_SECONDS: Final = 1_200


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str
    version: str
    # True: built inside a scratch module (`go get -tool` + `go build`), not `go install`.
    scratch_module: bool = False

    @property
    def binary(self) -> Path:
        return BIN_DIR / self.name

    @property
    def stamp(self) -> Path:
        return BIN_DIR / f".{self.name}.version"

    def installed(self) -> bool:
        return (
            self.binary.is_file()
            and self.stamp.is_file()
            and self.stamp.read_text().strip() == self.version
        )


PROMTOOL: Final = GoTool(
    "promtool", "github.com/prometheus/prometheus/cmd/promtool", PROMETHEUS_MODULE_VERSION
)
JAEGER: Final = GoTool(
    "jaeger", "github.com/jaegertracing/jaeger/cmd/jaeger", JAEGER_MODULE_VERSION, True
)
# Toxiproxy, the fault proxy of the failure-injection suite. Built in a scratch module so the
# binary is named for what it is (`go install` would call it "server").
TOXIPROXY: Final = GoTool(
    "toxiproxy-server", "github.com/Shopify/toxiproxy/v2/cmd/server", TOXIPROXY_VERSION, True
)
TOOLS: Final = {tool.name: tool for tool in (PROMTOOL, JAEGER, TOXIPROXY)}


class GoToolError(RuntimeError):
    pass


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoToolError(
            "`go` is not on PATH: promtool and Jaeger are built from the Go module proxy; "
            "install Go 1.24 or newer"
        )
    return go


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise GoToolError(f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}")


def ensure(tool: GoTool) -> Path:
    """The tool's binary, built first if it is missing or stamped with another version."""
    if tool.installed():
        return tool.binary
    go = _go()
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    if tool.scratch_module:
        scratch = SCRATCH_DIR / tool.name
        scratch.mkdir(parents=True, exist_ok=True)
        if not (scratch / "go.mod").exists():
            _run([go, "mod", "init", f"scratch/{tool.name}"], scratch)
        _run([go, "get", "-tool", f"{tool.package}@{tool.version}"], scratch)
        _run([go, "build", "-o", str(tool.binary), tool.package], scratch)
    else:
        env = {**os.environ, "GOBIN": str(BIN_DIR)}
        _run([go, "install", f"{tool.package}@{tool.version}"], REPO_ROOT, env)
    tool.stamp.write_text(tool.version + "\n")
    return tool.binary


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or ["promtool"]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        print(f"error: unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
        return 2
    for name in names:
        tool = TOOLS[name]
        if tool.installed():
            continue
        print(f"gotools: building {name} {tool.version} from the Go module proxy ...", flush=True)
        started = time.monotonic()
        try:
            ensure(tool)
        except (GoToolError, subprocess.TimeoutExpired) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 1
        print(f"gotools: {tool.binary} ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
