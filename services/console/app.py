"""The operator console: server-rendered pages over the outbox, the consumers and the DLQ.

Routes: ``/`` overview, ``/outbox`` Failed events (retry), ``/dlq`` dead letters (preview and
replay), ``/orders/{id}`` one order's timeline; the same data as JSON under ``/api/...``.
Actions are POST only, with the same code paths as the CLIs (``services.relay.retry`` and
``shared.dlq``'s ``replay`` with its Redis ledger). See :mod:`services.console.auth` for sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from pymongo.errors import PyMongoError

from services.console import views
from services.console.auth import CSRF_FIELD, SESSION_COOKIE, Keys, Session
from services.console.settings import ConsoleSettings
from services.relay.retry import RetryRefused, retry_all_failed, retry_event
from shared.dlq import StoredDlqRecord, read_dlq
from shared.dlq.__main__ import CliError, DlqSettings, replay, select
from shared.mongo import MongoClient, make_mongo_client
from shared.redaction import redact

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
T = TypeVar("T")

# No script runs on any page (there is none), so even an escaping mistake could not execute one.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class NotSignedIn(Exception):
    pass


class BadForm(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Sample:
    at: datetime
    pending: int
    published: int  # in the interval before ``at``


@dataclass
class ConsoleState:
    settings: ConsoleSettings
    client: MongoClient
    keys: Keys
    samples: deque[Sample] = field(default_factory=deque)


def _environment() -> Environment:
    # Autoescape every template, whatever its name; and redact every value rendered, so a URI
    # with a password can never reach a page through any field.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        finalize=lambda value: redact(value) if isinstance(value, str) else value,
    )
    env.filters["age"] = _age
    env.filters["when"] = _when
    return env


def _age(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if value else "-"


async def _attempt(work: Awaitable[T]) -> tuple[T | None, str | None]:
    """A read that may fail because a dependency is down: (value, None) or (None, why)."""
    try:
        return await work, None
    except Exception as exc:
        return None, redact(f"{type(exc).__name__}: {exc}")


async def _sample_forever(state: ConsoleState) -> None:
    """The overview's chart: backlog and publish count every ``sample_seconds``."""
    settings = state.settings
    last = datetime.now(UTC)
    while True:
        await asyncio.sleep(settings.sample_seconds)  # the sampling period itself, not a wait
        now = datetime.now(UTC)
        with contextlib.suppress(PyMongoError):
            counts = await views.outbox_counts(state.client, settings)
            published = await views.published_since(state.client, settings, last)
            state.samples.append(Sample(now, counts.pending, published))
            while len(state.samples) > settings.samples_kept:
                state.samples.popleft()
        last = now


def _chart(samples: list[Sample], width: int = 560, height: int = 120) -> dict[str, Any]:
    """Polyline points for the backlog and the publish count (server-rendered SVG)."""
    if len(samples) < 2:
        return {"backlog": "", "published": "", "max": 0, "width": width, "height": height}
    top = max(1, *(s.pending for s in samples), *(s.published for s in samples))
    step = width / (len(samples) - 1)

    def points(values: list[int]) -> str:
        return " ".join(
            f"{i * step:.1f},{height - v * (height - 4) / top:.1f}" for i, v in enumerate(values)
        )

    return {
        "backlog": points([s.pending for s in samples]),
        "published": points([s.published for s in samples]),
        "max": top,
        "width": width,
        "height": height,
    }


def _json(data: Any, status: int = 200) -> JSONResponse:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return JSONResponse(plain(data), status_code=status, headers=SECURITY_HEADERS)


def _state_of(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def _session_of(request: Request) -> Session:
    keys = _state_of(request).keys
    if keys.bearer_ok(request.headers.get("authorization")):
        return Session("", "bearer")
    session = keys.session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise NotSignedIn
    return session


State = Annotated[ConsoleState, Depends(_state_of)]
Auth = Annotated[Session, Depends(_session_of)]


def create_app(settings: ConsoleSettings) -> FastAPI:
    env = _environment()
    keys = Keys(settings.token.get_secret_value(), settings.session_hours * 3600)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "console")
        state = ConsoleState(settings, client, keys)
        app.state.console = state
        sampler = asyncio.create_task(_sample_forever(state), name="console-sampler")
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await client.close()

    app = FastAPI(title="Outbox console", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, _: NotSignedIn) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get(
            "accept", ""
        ):
            return JSONResponse(
                {"detail": "sign in: send Authorization: Bearer <CONSOLE_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer", **SECURITY_HEADERS},
            )
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(BadForm)
    async def _bad_form(request: Request, exc: BadForm) -> Response:
        if request.url.path.startswith("/api/"):
            return _json({"detail": str(exc)}, exc.status)
        return page("message.html", None, status=exc.status, title="Refused", message=str(exc))

    def page(name: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        csrf = keys.csrf_for(session) if session is not None else ""
        body = env.get_template(name).render(csrf=csrf, csrf_field=CSRF_FIELD, **context)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    async def form_of(request: Request, session: Session) -> dict[str, str]:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if not keys.csrf_ok(session, form.get(CSRF_FIELD)):
            raise BadForm("the form's CSRF token is missing or wrong: reload the page", 403)
        return form

    async def json_of(request: Request, session: Session) -> dict[str, Any]:
        if not keys.csrf_ok(session, request.headers.get("x-csrf-token")):
            raise BadForm("a signed-in browser must send X-CSRF-Token", 403)
        try:
            body = await request.json()
        except ValueError:
            raise BadForm("body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadForm("body must be a JSON object")
        return body

    # ------------------------------------------------------------------ sign-in

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(next: str = "/") -> Response:
        return page("login.html", None, title="Sign in", next=_local(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        target = _local(form.get("next", "/"))
        if not keys.token_ok(form.get("token", "")):
            return page(
                "login.html", None, status=401, title="Sign in", next=target, error="wrong token"
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            keys.new_session(),
            max_age=int(settings.session_hours * 3600),
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request, session: Auth) -> Response:
        await form_of(request, session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ overview

    async def overview_data(state: ConsoleState) -> dict[str, Any]:
        dlq, dlq_error = await _attempt(dead_letters())
        ready, leader, slots, dissent, counts, lags = await asyncio.gather(
            _attempt(views.readiness(settings)),
            _attempt(views.leader(state.client, settings)),
            _attempt(views.slot_owners(state.client, settings)),
            _attempt(views.slot_count_dissenters(state.client, settings)),
            _attempt(views.outbox_counts(state.client, settings)),
            _attempt(views.group_lags(settings)),
        )
        return {
            "readiness": [asdict(r) for r in ready[0] or []],
            "readinessError": ready[1],
            "leader": (
                {**asdict(leader[0]), "held": leader[0].held} if leader[0] is not None else None
            ),
            "leaderError": leader[1],
            "slots": [{**asdict(s), "held": s.held} for s in slots[0] or []],
            "slotOwners": views.owner_summary(slots[0] or []),
            "slotsError": slots[1],
            # Relays with another RELAY_SLOTS (they refuse to act): instance -> their value.
            "slotDissenters": dissent[0] or {},
            "outbox": asdict(counts[0]) if counts[0] is not None else None,
            "outboxError": counts[1],
            "lag": [
                {"group": g.group, "topic": g.topic, "partitions": g.partitions, "total": g.total}
                for g in lags[0] or []
            ],
            "lagError": lags[1],
            "dlq": views.dlq_counts(dlq or []),
            "dlqError": dlq_error,
            "samples": [asdict(s) for s in state.samples],
        }

    @app.get("/", response_class=HTMLResponse)
    async def overview(session: Auth, state: State) -> Response:
        data = await overview_data(state)
        return page(
            "overview.html",
            session,
            title="Overview",
            data=data,
            chart=_chart(list(state.samples)),
            sample_seconds=settings.sample_seconds,
        )

    @app.get("/api/overview")
    async def api_overview(_: Auth, state: State) -> Response:
        return _json(await overview_data(state))

    # ------------------------------------------------------------------ outbox

    @app.get("/outbox", response_class=HTMLResponse)
    async def outbox_page(session: Auth, state: State, done: str | None = None) -> Response:
        events, error = await _attempt(views.failed_events(state.client, settings))
        return page(
            "outbox.html", session, title="Outbox", events=events or [], error=error, done=done
        )

    @app.get("/api/outbox/failed")
    async def api_failed(_: Auth, state: State) -> Response:
        events, error = await _attempt(views.failed_events(state.client, settings))
        if error is not None:
            return _json({"detail": error}, 503)
        return _json({"failed": events})

    async def do_retry(state: ConsoleState, event_id: str | None, everything: bool) -> str:
        outbox = state.client[settings.orders_database][views.OUTBOX]
        try:
            if everything:
                count = await retry_all_failed(outbox)
                return f"{count} failed event(s) put back to Pending"
            if not event_id:
                raise BadForm("name an event id, or retry all")
            await retry_event(outbox, event_id)
            return f"event {event_id} put back to Pending"
        except RetryRefused as refused:
            raise BadForm(str(refused), 422 if refused.bad_id else 409) from None
        except PyMongoError as exc:
            raise BadForm(redact(f"MongoDB unavailable: {exc}"), 503) from None

    @app.post("/outbox/retry")
    async def retry_from_page(request: Request, session: Auth, state: State) -> Response:
        form = await form_of(request, session)
        message = await do_retry(state, form.get("event_id"), form.get("all") == "1")
        return RedirectResponse(f"/outbox?done={quote(message)}", status_code=303)

    @app.post("/api/outbox/retry")
    async def api_retry(request: Request, session: Auth, state: State) -> Response:
        body = await json_of(request, session)
        event_id = body.get("eventId")
        message = await do_retry(
            state, event_id if isinstance(event_id, str) else None, body.get("all") is True
        )
        return _json({"result": message})

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(topic: str | None = None) -> list[StoredDlqRecord]:
        """The records of ``topic`` (one of the DLQ topics), or of every DLQ topic."""
        topics = settings.dlq_topics if topic is None else (topic,)
        if topic is not None and topic not in settings.dlq_topics:
            known = ", ".join(settings.dlq_topics)
            raise BadForm(f"topic must be one of the dead-letter topics ({known}), got {topic!r}")
        records = []
        for name in topics:
            found, error = await _attempt(read_dlq(settings.kafka_bootstrap_servers, name))
            if error is not None:
                raise BadForm(f"cannot read {name}: {error}", 503)
            records += found or []
        return records

    @app.get("/dlq", response_class=HTMLResponse)
    async def dlq_page(session: Auth) -> Response:
        groups = views.group_dead_letters(await dead_letters())
        return page(
            "dlq.html",
            session,
            title="Dead letters",
            topics=settings.dlq_topics,
            groups=[(g, [views.record_view(r) for r in g.records]) for g in groups],
        )

    @app.get("/api/dlq")
    async def api_dlq(_: Auth) -> Response:
        groups = views.group_dead_letters(await dead_letters())
        return _json(
            {
                "groups": [
                    {
                        "topic": g.topic,
                        "group": g.group,
                        "cause": g.cause,
                        "records": [views.record_view(r) for r in g.records],
                    }
                    for g in groups
                ]
            }
        )

    async def do_replay(
        topic: str | None, ref: str | None, group: str | None, dry_run: bool
    ) -> list[str]:
        """The CLI's own ``select`` and ``replay`` (same Redis ledger: at most once a record),
        on one dead-letter topic: the one named, or the only one holding the record."""
        if ref is None and group is None:
            raise BadForm("name a record (partition:offset) or a consumer group")
        records = await dead_letters(topic)
        chosen: dict[str, list[StoredDlqRecord]] = {}
        for name in sorted({r.topic for r in records}):
            with contextlib.suppress(CliError):
                if picked := select([r for r in records if r.topic == name], group=group, ref=ref):
                    chosen[name] = picked
        if not chosen:
            # Asked again of all of them together, for the CLI's own words on what is wrong.
            try:
                select(records, group=group, ref=ref)
            except CliError as exc:
                raise BadForm(str(exc), 404) from None
            raise BadForm(f"no DLQ record {ref or ''} for group {group}", 404)
        if ref is not None and len(chosen) > 1:
            raise BadForm(
                f"record {ref} exists in several dead-letter topics ({', '.join(chosen)}): "
                "name the topic",
                409,
            )
        lines: list[str] = []
        count = 0
        for name, picked in chosen.items():
            dlq_settings = DlqSettings(
                kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
                redis_url=settings.redis_url,
                topic=name,
            )
            out = io.StringIO()
            try:
                count += await replay(dlq_settings, picked, dry_run=dry_run, out=out)
            except Exception as exc:
                raise BadForm(redact(f"replay failed: {type(exc).__name__}: {exc}"), 503) from None
            lines += out.getvalue().splitlines()
        return [*lines, f"{'would replay' if dry_run else 'replayed'} {count} record(s)"]

    @app.post("/dlq/replay", response_class=HTMLResponse)
    async def replay_from_page(request: Request, session: Auth) -> Response:
        form = await form_of(request, session)
        topic = form.get("topic") or None
        ref, group = form.get("ref") or None, form.get("group") or None
        dry_run = form.get("confirm") != "1"
        lines = await do_replay(topic, ref, group, dry_run)
        return page(
            "replay.html",
            session,
            title="Replay preview" if dry_run else "Replayed",
            lines=lines,
            dry_run=dry_run,
            topic=topic or "",
            ref=ref or "",
            group=group or "",
        )

    @app.post("/api/dlq/replay")
    async def api_replay(request: Request, session: Auth) -> Response:
        body = await json_of(request, session)
        topic, ref, group = body.get("topic"), body.get("ref"), body.get("group")
        lines = await do_replay(
            topic if isinstance(topic, str) else None,
            ref if isinstance(ref, str) else None,
            group if isinstance(group, str) else None,
            body.get("dryRun", True) is not False,
        )
        return _json({"lines": lines})

    # ------------------------------------------------------------------ order timeline

    async def order_data(state: ConsoleState, order_id: str) -> dict[str, Any] | None:
        order, steps, traces = await views.timeline(state.client, settings, order_id)
        if order is None:
            return None
        links = [f"{settings.jaeger_url}/trace/{t}" for t in traces] if settings.jaeger_url else []
        return {
            "order": order,
            "steps": [asdict(s) for s in steps],
            "traces": traces,
            "traceLinks": links,
        }

    @app.get("/orders", response_class=HTMLResponse)
    async def find_order(_: Auth, id: str = "") -> Response:
        return RedirectResponse(f"/orders/{quote(id.strip(), safe='')}", status_code=303)

    @app.get("/orders/{order_id}", response_class=HTMLResponse)
    async def order_page(order_id: str, session: Auth, state: State) -> Response:
        data, error = await _attempt(order_data(state, order_id))
        if error is not None:
            raise BadForm(error, 503)
        if data is None:
            return page(
                "message.html", session, 404, title="Unknown order", message=f"no order {order_id}"
            )
        return page("order.html", session, title=f"Order {order_id}", data=data)

    @app.get("/api/orders/{order_id}")
    async def api_order(order_id: str, _: Auth, state: State) -> Response:
        data, error = await _attempt(order_data(state, order_id))
        if error is not None:
            return _json({"detail": error}, 503)
        if data is None:
            return _json({"detail": f"no order {order_id}"}, 404)
        return _json(data)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Serving is ready: every page reports its own dependency failures itself. Says nothing else,
    # so it needs no token (the stack's readiness probe calls it).
    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _local(target: str) -> str:
    """Only paths of this site after sign-in: never an open redirect to another host."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


__all__ = ["create_app"]
