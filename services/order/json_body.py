"""Request bodies are UTF-8 JSON; anything FastAPI cannot parse takes the documented 422 path.

FastAPI turns a ``json.JSONDecodeError`` into the 422 ``json_invalid`` error the contract
promises, but any other parse failure into ``400 "There was an error parsing the body"``: a body
that is not UTF-8 (``UnicodeDecodeError``) or nested too deep for the parser (``RecursionError``).
:class:`JsonRoute` (FastAPI's documented custom-route hook) hands the routes a request whose
``json()`` reports every such failure as a ``JSONDecodeError``, so all of them become 422.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                # RFC 8259: JSON between systems is UTF-8 (json.loads would sniff UTF-16/32);
                # a leading byte-order mark is tolerated, as json.loads did.
                text = body.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(
                    f"body is not UTF-8 ({exc.reason})", body.decode("latin-1"), exc.start
                ) from exc
            try:
                self._json = json.loads(text)
            except RecursionError as exc:
                raise json.JSONDecodeError("body nested too deep", text, 0) from exc
        return self._json


class JsonRoute(APIRoute):
    """An APIRoute whose JSON body parsing fails only with 422 ``json_invalid``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_as_utf8_json(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return parse_as_utf8_json
