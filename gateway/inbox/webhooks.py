"""HTTP edge for citizens' messages and the staff API.

* `POST /webhooks/sms/{provider}`: inbound SMS, JSON or form bodies in UTF-8 or EUC-KR/CP949,
  signed with HMAC-SHA256 over `timestamp.public_url.body` (replay window, constant-time
  compare). 2xx only once the message is durable; 503 when Redis is down (the provider
  retries); 4xx with a reason for bad input.
* `POST /webhooks/unsubscribe/{provider}`: the provider's 080 opt-out events.
* `/api/...` behind a bearer token: inbox per queue, threads, claim, reply, opt-out admin. A
  thread is answered by whoever claimed it (409 for anyone else; an unclaimed thread is claimed
  by its first answer); claiming again or posting the same reply again is no error. Every error
  is JSON ``{"error": ...}``.

Bad input is a 4xx with a reason, logged as one rate-limited WARNING per route and kind, never
with the input (`gateway.infra.edgelog`).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.domain.inputs import text_problem
from gateway.domain.numbers import NumberPlan
from gateway.errors import ClaimedByOther, GatewayError, RecipientUnknown, StoreUnavailable, ThreadNotFound
from gateway.inbox.intake import InboundRejected, Intake, OptedOut, inbound_from_fields
from gateway.infra.crypto import sign
from gateway.infra.edgelog import MalformedLog, install_parser_filter
from gateway.infra.http import read_body

log = logging.getLogger(__name__)

MAX_SMS_BODY = 16 * 1024  # an LMS is 2,000 bytes; anything much bigger is not an SMS webhook
REPLAY_WINDOW_S = 300
# The webhook fields the intake reads: text ones must be JSON strings (an object or a boolean is
# not a message); received_at may also be a JSON number (epoch seconds).
TEXT_FIELDS = frozenset({"message_id", "from", "to", "text"})
NUMBER_FIELDS = frozenset({"received_at"})


@dataclass(frozen=True, slots=True)
class InboundProvider:
    name: str
    secret: str
    public_url: str  # the URL the provider posts to, as it signs it


class BadRequest(GatewayError):
    """Malformed webhook input (HTTP 400)."""


class Unauthorized(GatewayError):
    """Missing, wrong or replayed signature (HTTP 401)."""


def verify(provider: InboundProvider, headers: Mapping[str, str], body: bytes, now: float) -> None:
    timestamp = headers.get("X-Signature-Timestamp", "")
    given = headers.get("X-Signature", "")
    if not timestamp or not given:
        raise Unauthorized("missing X-Signature-Timestamp or X-Signature")
    try:
        age = abs(now - float(timestamp))
    except ValueError:
        raise Unauthorized("bad X-Signature-Timestamp") from None
    if not math.isfinite(age) or age > REPLAY_WINDOW_S:  # "nan" compares False with everything
        raise Unauthorized(f"timestamp outside the {REPLAY_WINDOW_S} s window (replayed or clock skew)")
    expected = sign(provider.secret, timestamp, provider.public_url, body)
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise Unauthorized("bad signature")


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            name = value.strip('"').lower()
            # EUC-KR senders routinely include CP949-only syllables; cp949 is its superset.
            return "cp949" if name in ("euc-kr", "euckr", "ks_c_5601-1987", "cp949", "ms949") else name
    return "utf-8"


def parse_body(content_type: str, body: bytes) -> dict[str, str]:
    """Webhook fields from a JSON or form body, in the declared charset. Raises BadRequest."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    charset = _charset(content_type)
    try:
        if media == "application/json":
            data = json.loads(body.decode(charset))
            if not isinstance(data, dict):
                raise BadRequest("JSON body must be an object")
            return _checked_fields(data)
        if media == "application/x-www-form-urlencoded":
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                              encoding=charset, errors="strict")
            return _checked_fields(dict(pairs))
    except UnicodeDecodeError:
        raise BadRequest(f"body is not valid {charset}") from None
    except LookupError:
        raise BadRequest(f"unknown charset {charset!r}") from None
    except ValueError as exc:
        raise BadRequest(f"malformed body: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed body: JSON nested too deeply") from None
    raise BadRequest(f"unsupported content type {media!r} (application/json or form)")


def _checked_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """The body's fields as text: the intake's fields must be strings of valid Unicode (a lone
    surrogate or a nested object is refused with BadRequest naming the field); other fields are
    kept only when they are clean text (the intake does not read them)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if value is None:  # absent: "missing field" if the intake needs it
            continue
        if key in NUMBER_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = str(value)
            continue
        problem = text_problem(key, value)
        if problem is None:
            out[key] = value
        elif key in TEXT_FIELDS or key in NUMBER_FIELDS:
            raise BadRequest(problem)
    return out


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application, intake: Intake, providers: Mapping[str, InboundProvider], *,
               api_token: str, unsubscribe: Mapping[str, Callable[[Mapping[str, str], bytes], list[str]]],
               plan: NumberPlan, draining: Callable[[], bool] = lambda: False) -> None:
    malformed = MalformedLog(log)
    quiet_parser: list[Callable[[], None]] = []

    async def parser_filter_on(_: web.Application) -> None:
        quiet_parser.append(install_parser_filter(malformed))

    async def parser_filter_off(_: web.Application) -> None:
        while quiet_parser:
            quiet_parser.pop()()

    # aiohttp's HTTP parser errors (before any handler): quiet while this app runs.
    app.on_startup.append(parser_filter_on)
    app.on_cleanup.append(parser_filter_off)

    def refused(request: web.Request, status: int, exc: Exception) -> web.Response:
        """A 4xx for bad input: one rate-limited WARNING per route and kind (no input logged)."""
        resource = request.match_info.route.resource
        malformed.note(f"http {resource.canonical if resource else '-'}", f"{status} {type(exc).__name__}")
        return _json_error(status, str(exc))

    async def inbound(request: web.Request) -> web.Response:
        if draining():
            return _json_error(503, "shutting down, retry")
        provider = providers.get(request.match_info["provider"])
        if provider is None:
            return _json_error(404, "unknown provider")
        # The whole body, however many TCP reads it takes; 413 (JSON) past the limit, declared or not.
        body = await read_body(request, MAX_SMS_BODY)
        try:
            verify(provider, request.headers, body, time.time())
            fields = parse_body(request.headers.get("Content-Type", ""), body)
            sms = inbound_from_fields(fields, provider.name, plan, time.time())
            result = await intake.accept(sms)
        except Unauthorized as exc:
            return refused(request, 401, exc)
        except (BadRequest, InboundRejected, RecipientUnknown) as exc:
            return refused(request, 400, exc)
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable, retry")
        answer = {"status": result.status, "thread": result.thread, "queue": result.queue}
        if result.reply:  # why no automatic reply is sent ("not_mobile")
            answer["reply"] = result.reply
        return web.json_response(answer)

    async def unsubscribed(request: web.Request) -> web.Response:
        parser = unsubscribe.get(request.match_info["provider"])
        if parser is None:
            return _json_error(404, "unknown provider")
        body = await read_body(request, MAX_SMS_BODY)  # the whole body, however many TCP reads
        try:
            numbers = parser(request.headers, body)
            for number in numbers:
                await intake.optouts.set(number, True, channel="080", via=request.match_info["provider"])
        except ValueError as exc:  # ReportRejected: forged or unreadable
            return _json_error(401 if "signature" in str(exc).lower() else 400, str(exc))
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable, retry")
        return web.json_response({"opted_out": len(numbers)})

    def staff_only(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        """The staff API's bearer token, checked per route (a middleware would wrap every
        request, the citizens' webhooks too, in layers of handlers)."""
        async def checked(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "")
            if not api_token or not hmac.compare_digest(given.encode(), f"Bearer {api_token}".encode()):
                return _json_error(401, "bearer token required")
            try:
                return await handler(request)
            except BadRequest as exc:  # the staff API's bad input: JSON like every other answer
                return refused(request, 400, exc)
        return checked

    async def inbox(request: web.Request) -> web.Response:
        try:
            count = min(500, max(1, int(request.query.get("count", "50"))))
        except ValueError:
            return _json_error(400, "count must be a number")
        try:
            return web.json_response(await intake.inbox(request.match_info["queue"], count=count))
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable")

    async def thread(request: web.Request) -> web.Response:
        found = await intake.thread(request.match_info["id"])
        return web.json_response(found, dumps=_dumps) if found else _json_error(404, "no such thread")

    async def claim(request: web.Request) -> web.Response:
        """Claim a thread: 200 for the claimer (again: a double click is no error), 404 for no
        such thread, 409 with the holder when someone else has it."""
        staff = _text(await _json(request), "staff")
        if not staff:
            return _json_error(400, "staff is required")
        try:
            await intake.claim(request.match_info["id"], staff)
        except ThreadNotFound as exc:
            return _json_error(404, str(exc))
        except ClaimedByOther as exc:
            return web.json_response({"error": str(exc), "claimed_by": exc.holder}, status=409, dumps=_dumps)
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable")
        return web.json_response({"claimed": True})

    async def reply(request: web.Request) -> web.Response:
        """Answer a thread: only its claimer may; an unclaimed thread is claimed by the answer.
        202 queued; 200 "duplicate" for the same text posted again by the same staff moments later."""
        data = await _json(request)
        text, staff = _text(data, "text"), _text(data, "staff")
        if not staff:
            return _json_error(400, "staff is required")
        try:
            result = await intake.reply(request.match_info["id"], text, staff)
        except ClaimedByOther as exc:
            return web.json_response({"error": str(exc), "claimed_by": exc.holder}, status=409, dumps=_dumps)
        except ThreadNotFound as exc:
            return _json_error(404, str(exc))
        except OptedOut as exc:
            return _json_error(409, str(exc))
        except InboundRejected as exc:
            return refused(request, 400, exc)
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable")
        if result == "store_unavailable":  # the guard could not reach Redis: the client retries
            return web.json_response({"result": result, "error": "temporarily unavailable"}, status=503)
        status = 202 if result == "queued" else 200 if result == "duplicate" else 409
        return web.json_response({"result": result}, status=status)

    async def optout(request: web.Request) -> web.Response:
        data = await _json(request)
        number = plan.classify(_text(data, "number")).e164
        if not number.startswith("+"):
            return _json_error(400, "number is not a phone number")
        action = _text(data, "action")
        if action not in ("add", "remove"):
            return _json_error(400, "action must be add or remove")
        await intake.optouts.set(number, action == "add", channel="admin", via=_text(data, "staff") or "api")
        return web.json_response({"opted_out": action == "add"})

    async def optout_status(request: web.Request) -> web.Response:
        number = plan.classify(request.match_info["number"]).e164
        if not number.startswith("+"):
            return _json_error(400, "number is not a phone number")
        return web.json_response({"opted_out": await intake.optouts.status(number)})

    app.router.add_post("/webhooks/sms/{provider}", inbound)
    app.router.add_post("/webhooks/unsubscribe/{provider}", unsubscribed)
    app.router.add_get("/api/inbox/{queue}", staff_only(inbox))
    app.router.add_get("/api/threads/{id}", staff_only(thread))
    app.router.add_post("/api/threads/{id}/claim", staff_only(claim))
    app.router.add_post("/api/threads/{id}/reply", staff_only(reply))
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
