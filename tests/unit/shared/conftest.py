"""Fixtures of the bearer-token tests (test_auth_*.py): a JWKS on loopback and a signing key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.shared.jwks_server import JwksServer


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    """A JWKS server with no keys yet, stopped after the test."""
    server = JwksServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key, one per test module (making one is cheap, but not free)."""
    return ec.generate_private_key(ec.SECP256R1())
