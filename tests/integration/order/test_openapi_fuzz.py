"""The order API keeps its own OpenAPI document: Schemathesis, every check, every endpoint.

Schemathesis (a property-based API fuzzer nobody here wrote) reads ``/openapi.json`` of a real
``python -m services.order`` process on the embedded stack and generates valid and invalid
requests for every operation for about a minute, each with a valid bearer token of the stack's
development issuer (Schemathesis's ``ignored_auth`` check also sends them without one and wants
the 401 the document promises). Any answer the document does not describe
fails the test: a 5xx, an undocumented status or header, a body off its schema, a schema-valid
request refused, an invalid one accepted. The seed is fixed and printed, so a failure reproduces
with the command the test prints.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.redaction import redact
from stack import Stack
from tests.integration.order.conftest import bearer
from tests.integration.order.order_process import order_process

FUZZ_DATABASE = "orders_api_fuzz"
# Fixed for reproducibility; change it on purpose to explore other inputs.
SEED = 20261127
# About a minute of generation, as the issue asks; the process gets slack on top for start-up,
# shrinking a failure and writing its report on a loaded machine.
FUZZ_SECONDS = 60
PROCESS_DEADLINE_SECONDS = 300


@pytest.fixture
async def order_api(stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """A real order API process on its own database; yields its base URL."""
    async with order_process(stack, FUZZ_DATABASE, tmp_path / "order.log") as api:
        yield api.base_url


def _requests_by_route(metrics: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    pattern = re.compile(
        r'^http_requests_total\{method="(\w+)",route="([^"]+)",status="\d+"\} (\S+)$'
    )
    for line in metrics.splitlines():
        if match := pattern.match(line):
            key = (match[1], match[2])
            counts[key] = counts.get(key, 0.0) + float(match[3])
    return counts


async def test_order_api_answers_as_its_openapi_document_says(
    stack: Stack, order_api: str, tmp_path: Path
) -> None:
    authorization = bearer(stack, "fuzz-user")["Authorization"]
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{order_api}/openapi.json",
        "--checks",
        "all",
        "--max-time",
        str(FUZZ_SECONDS),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--no-color",
        "--header",
        f"Authorization: {authorization}",
    ]
    # Printed so a failure can be rerun by hand against `make up` (replace the URL, and the
    # masked token with one of `python -m stack token USER`).
    print(f"schemathesis seed {SEED}: {redact(shlex.join(command))}")
    # The cwd is a scratch directory: Hypothesis keeps its example database in ./.hypothesis.
    fuzzer = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        output, _ = await asyncio.wait_for(fuzzer.communicate(), timeout=PROCESS_DEADLINE_SECONDS)
    finally:
        if fuzzer.returncode is None:
            fuzzer.kill()
            await fuzzer.wait()
    report = output.decode(errors="replace")
    print(report)
    assert fuzzer.returncode == 0, f"schemathesis (seed {SEED}) found failures:\n{report}"

    # Every operation of the document was exercised: counted by the API itself, by template.
    async with httpx.AsyncClient(base_url=order_api, timeout=10) as http:
        document = (await http.get("/openapi.json")).json()
        counts = _requests_by_route((await http.get("/metrics")).text)
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    untested = sorted(op for op in operations if counts.get(op, 0) < 1)
    assert not untested, f"operations schemathesis never called: {untested}"
