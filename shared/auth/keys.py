"""The issuer's signing keys, read from its JWKS over HTTP and cached.

Fetched with httpx on the event loop, not with PyJWT's ``PyJWKClient``: that client reads with
blocking urllib (a thread per refresh, or a stalled loop) and refetches on *every* unknown
``kid``, so a stream of tokens with made-up kids would become a stream of requests to the
identity provider. Here the keys are still built by PyJWT (``jwt.PyJWK``); only the fetch and the
cache policy are ours:

* a known ``kid`` is answered from the cache (re-read after ``max_age``; if that re-read fails the
  cached keys stay in use, the identity provider being briefly away is no reason to refuse);
* an unknown ``kid`` triggers one fetch, at most once per ``min_refresh`` (concurrent requests
  share it): found -> the key; still unknown -> :class:`InvalidToken`;
* the JWKS unreachable (or answered garbage) for a ``kid`` not cached -> :class:`KeysUnavailable`
  (503), never an accept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import httpx
import jwt

from shared.auth.errors import InvalidToken, KeysUnavailable

log = logging.getLogger(__name__)

# A JWKS is a few keys (Keycloak's: 2, ~3 KB); anything far larger is not one.
MAX_JWKS_BYTES: Final = 256 * 1024
_SIGNING_KEY_TYPES: Final = frozenset({"RSA", "EC", "OKP"})


class JwksFetchError(Exception):
    """The JWKS could not be read or is not a JWKS (the message says which)."""


class JwksKeys:
    """Signing keys by ``kid`` from one JWKS URL. Use on one event loop."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Collection[str],
        min_refresh_seconds: float,
        max_age_seconds: float,
        timeout_seconds: float,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._algorithms = frozenset(algorithms)
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._timeout = timeout_seconds
        self._client = client
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._last_fetch_failed = False
        self._lock = asyncio.Lock()
        self.fetches = 0  # successful and failed, for tests and metrics

    async def key_for(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``; :class:`InvalidToken` if the issuer has none by that name,
        :class:`KeysUnavailable` if it cannot be asked and the key is not cached."""
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        async with self._lock:  # one fetch for every request that needs it
            key = self._keys.get(kid)
            if key is not None and not self._stale():
                return key
            if self._cooling_down():
                return self._without_fetch(kid, key)
            try:
                await self._refresh()
            except JwksFetchError as error:
                if key is not None:
                    log.warning("JWKS refresh failed, keeping the cached keys: %s", error)
                    return key
                log.warning("JWKS unreachable for an uncached key id: %s", error)
                raise KeysUnavailable(
                    "the identity provider's keys cannot be read now",
                    self._cooldown_left(),
                ) from None
            key = self._keys.get(kid)
            if key is None:
                raise InvalidToken("the token is signed with a key the issuer does not publish")
            return key

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > self._max_age

    def _cooling_down(self) -> bool:
        return self._attempted_at is not None and self._clock() - self._attempted_at < (
            self._min_refresh
        )

    def _cooldown_left(self) -> int:
        if self._attempted_at is None:
            return 1
        return math.ceil(self._min_refresh - (self._clock() - self._attempted_at))

    def _without_fetch(self, kid: str, cached: jwt.PyJWK | None) -> jwt.PyJWK:
        if cached is not None:
            return cached  # stale, and a refresh was tried moments ago: still the best we know
        if self._last_fetch_failed:
            raise KeysUnavailable(
                "the identity provider's keys cannot be read now", self._cooldown_left()
            )
        raise InvalidToken("the token is signed with a key the issuer does not publish")

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        self._last_fetch_failed = True
        document = await self._fetch()
        keys = parse_jwks(document, self._algorithms)
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_fetch_failed = False
        log.info("JWKS read from %s: %d signing key(s)", self.url, len(keys))

    async def _fetch(self) -> Any:
        if self._client is None:
            # No redirects: the key set's address is configuration, not something to be sent
            # elsewhere from.
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        try:
            response = await self._client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError as error:
            raise JwksFetchError(f"GET {self.url}: {type(error).__name__}") from None
        if response.status_code != 200:
            raise JwksFetchError(f"GET {self.url}: HTTP {response.status_code}")
        if len(response.content) > MAX_JWKS_BYTES:
            raise JwksFetchError(f"GET {self.url}: larger than {MAX_JWKS_BYTES} bytes")
        try:
            return response.json()
        except ValueError:
            raise JwksFetchError(f"GET {self.url}: not JSON") from None


def parse_jwks(document: Any, algorithms: Collection[str]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by ``kid``.

    Skipped (not an error, a JWKS may hold keys for others): keys for encryption (``use: enc``),
    symmetric keys (``kty: oct``, never trusted for a signature), keys without a ``kid``, keys
    whose ``alg`` is not in ``algorithms`` and keys PyJWT cannot read. A document that is not a
    JWKS at all raises :class:`JwksFetchError`.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("not a JWKS (no 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping):
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        if (
            not isinstance(kid, str)
            or entry.get("use", "sig") != "sig"
            or entry.get("kty") not in _SIGNING_KEY_TYPES
            or (alg is not None and alg not in algorithms)
        ):
            continue
        try:
            keys[kid] = jwt.PyJWK(dict(entry))
        except jwt.PyJWTError as error:
            log.warning("JWKS key %r skipped: %s", kid, error)
    return keys
