"""The bearer token a request carries appears in no log record of the API (message or field) and
in no answer, whether the request is accepted or refused."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.integration.order.conftest import DEFAULT_USER, Api, order_body, token_for


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    # The formatted message and every field (extras included) of every record, raw: what any
    # handler could print, before the JSON formatter's own redaction.
    return "\n".join(f"{record.getMessage()} {record.__dict__!r}" for record in caplog.records)


def _everything_answered(responses: list[httpx.Response]) -> str:
    return "\n".join(f"{r.headers!r} {r.text}" for r in responses)


async def test_no_token_reaches_a_log_record_or_an_answer(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    accepted = token_for(api.stack, DEFAULT_USER)
    expired = token_for(api.stack, DEFAULT_USER, now=time.time() - 7200)
    forged = accepted.rsplit(".", 1)[0] + ".c2lnbmF0dXJlLW9mLW5vLW9uZQ"
    tokens = {"accepted": accepted, "expired": expired, "forged": forged}

    with caplog.at_level(logging.DEBUG):
        created = await api.anonymous.post(
            "/orders", json=order_body(), headers={"Authorization": f"Bearer {accepted}"}
        )
        responses = [
            created,
            await api.anonymous.get(
                created.headers["location"], headers={"Authorization": f"Bearer {accepted}"}
            ),
            await api.anonymous.post(
                "/orders", json=order_body(), headers={"Authorization": f"Bearer {expired}"}
            ),
            await api.anonymous.post(
                "/orders", json=order_body(), headers={"Authorization": f"Bearer {forged}"}
            ),
        ]

    assert [r.status_code for r in responses] == [201, 200, 401, 401]
    logged, answered = _everything_logged(caplog), _everything_answered(responses)
    # The records are there (an order created, two refusals): the check is not vacuous.
    assert "order created" in logged
    refusals = [r for r in caplog.records if r.getMessage().startswith("request refused by")]
    assert len(refusals) == 2, logged
    for name, token in tokens.items():
        signature = token.rsplit(".", 1)[1]
        assert signature not in logged, f"the {name} token's signature was logged"
        assert signature not in answered, f"the {name} token's signature was answered"
