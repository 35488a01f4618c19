"""HTTP edge for the city's staff: the `/api/...` routes behind a bearer token.

* `GET /api/inbox/{queue}?count=N`: a queue's newest threads.
* `GET /api/threads/{id}`: one thread with its messages.
* `POST /api/threads/{id}/claim` ``{"staff"}``: claim a thread (409 with ``claimed_by`` when
  someone else has it; claiming again is no error).
* `POST /api/threads/{id}/reply` ``{"text", "staff"}``: answer it; only its claimer may (an
  unclaimed thread is claimed by its first answer); posting the same reply again is no error.
* `POST /api/threads/{id}/close` ``{"staff"}``: close it (200 ``{"closed": true, "already": false}``;
  closing again is no error: ``"already": true``); a new message from the citizen re-opens it.
* `POST /api/optout` ``{"number", "action": "add"|"remove", "staff"}`` and
  `GET /api/optout/{number}`: the opt-out register, by hand.

Every error is JSON ``{"error": ...}`` with the status its class carries
(`gateway.infra.http.error_response`); bad input is logged as one rate-limited WARNING per route
and kind, never with the input (`gateway.infra.edgelog`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from gateway.domain.inputs import text_problem
from gateway.domain.numbers import NumberPlan
from gateway.errors import BadRequest, ClaimedByOther, StoreUnavailable, ThreadNotFound
from gateway.inbox.intake import InboundRejected, Intake, OptedOut
from gateway.infra.crypto import same_secret
from gateway.infra.edgelog import MalformedLog
from gateway.infra.http import error_response, json_error, refused

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, intake: Intake, *, api_token: str, plan: NumberPlan) -> None:
    """The staff API on `app`, every route behind the bearer token `api_token` (none: all 401)."""
    malformed = MalformedLog(log)

    def staff_only(handler: Handler) -> Handler:
        """The staff API's bearer token, checked per route (a middleware would wrap every
        request, the citizens' webhooks too, in layers of handlers)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "")
            if not api_token or not same_secret(given, f"Bearer {api_token}"):
                return json_error(401, "bearer token required")
            try:
                return await handler(request)
            except BadRequest as exc:  # the staff API's bad input: JSON like every other answer
                return refused(malformed, request, exc)
            except StoreUnavailable as exc:
                return error_response(exc)
            except RedisError:
                # A read the route does not wrap (inbox, thread, opt-out status): Redis cannot
                # answer now. 503 (the console retries), never a plain-text 500.
                return error_response(StoreUnavailable("redis unavailable"))

        return checked

    async def inbox(request: web.Request) -> web.Response:
        try:
            count = min(500, max(1, int(request.query.get("count", "50"))))
        except ValueError:
            return json_error(400, "count must be a number")
        try:
            return web.json_response(await intake.inbox(request.match_info["queue"], count=count))
        except StoreUnavailable as exc:
            return error_response(exc)

    async def thread(request: web.Request) -> web.Response:
        found = await intake.thread(request.match_info["id"])
        return web.json_response(found, dumps=_dumps) if found else json_error(404, "no such thread")

    async def claim(request: web.Request) -> web.Response:
        """Claim a thread: 200 for the claimer (again: a double click is no error), 404 for no
        such thread, 409 with the holder when someone else has it."""
        staff = _text(await _json(request), "staff")
        if not staff:
            return json_error(400, "staff is required")
        try:
            await intake.claim(request.match_info["id"], staff)
        except (ThreadNotFound, ClaimedByOther, StoreUnavailable) as exc:
            return error_response(exc)
        return web.json_response({"claimed": True})

    async def reply(request: web.Request) -> web.Response:
        """Answer a thread: only its claimer may; an unclaimed thread is claimed by the answer.
        202 queued; 200 "duplicate" for the same text posted again by the same staff moments later."""
        data = await _json(request)
        text, staff = _text(data, "text"), _text(data, "staff")
        if not staff:
            return json_error(400, "staff is required")
        try:
            result = await intake.reply(request.match_info["id"], text, staff)
        except InboundRejected as exc:  # an empty reply: bad input
            return refused(malformed, request, exc)
        except (ClaimedByOther, ThreadNotFound, OptedOut, StoreUnavailable) as exc:
            return error_response(exc)
        if result == "store_unavailable":  # the guard could not reach Redis: the client retries
            return web.json_response({"result": result, "error": "temporarily unavailable"}, status=503)
        status = 202 if result == "queued" else 200 if result == "duplicate" else 409
        return web.json_response({"result": result}, status=status)

    async def close(request: web.Request) -> web.Response:
        """Close a thread: 200 (again: ``already``), 404 for no such thread."""
        staff = _text(await _json(request), "staff")
        if not staff:
            return json_error(400, "staff is required")
        try:
            closed = await intake.close(request.match_info["id"], staff)
        except (ThreadNotFound, StoreUnavailable) as exc:
            return error_response(exc)
        return web.json_response({"closed": True, "already": not closed})

    async def optout(request: web.Request) -> web.Response:
        data = await _json(request)
        number = plan.classify(_text(data, "number")).e164
        if not number.startswith("+"):
            return json_error(400, "number is not a phone number")
        action = _text(data, "action")
        if action not in ("add", "remove"):
            return json_error(400, "action must be add or remove")
        await intake.optouts.set(number, action == "add", channel="admin", via=_text(data, "staff") or "api")
        return web.json_response({"opted_out": action == "add"})

    async def optout_status(request: web.Request) -> web.Response:
        number = plan.classify(request.match_info["number"]).e164
        if not number.startswith("+"):
            return json_error(400, "number is not a phone number")
        return web.json_response({"opted_out": await intake.optouts.status(number)})

    app.router.add_get("/api/inbox/{queue}", staff_only(inbox))
    app.router.add_get("/api/threads/{id}", staff_only(thread))
    app.router.add_post("/api/threads/{id}/claim", staff_only(claim))
    app.router.add_post("/api/threads/{id}/reply", staff_only(reply))
    app.router.add_post("/api/threads/{id}/close", staff_only(close))
    app.router.add_post("/api/optout", staff_only(optout))
    app.router.add_get("/api/optout/{number}", staff_only(optout_status))


async def _json(request: web.Request) -> dict[str, Any]:
    """The staff API's JSON object body; BadRequest (a JSON 400) otherwise."""
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    except RecursionError:
        raise BadRequest("body must be JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _text(data: Mapping[str, Any], field: str) -> str:
    """A string field of a staff API body ("" when absent); BadRequest naming the field when it
    is not a string of valid Unicode (a lone surrogate cannot be stored or sent)."""
    value = data.get(field)
    if value is None:
        return ""
    problem = text_problem(field, value)
    if problem is not None:
        raise BadRequest(problem)
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
