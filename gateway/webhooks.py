"""HTTP edge for citizens' messages and the staff API.

* `POST /webhooks/sms/{provider}`: inbound SMS, JSON or form bodies in UTF-8 or EUC-KR/CP949,
  signed with HMAC-SHA256 over `timestamp.public_url.body` (replay window, constant-time
  compare). 2xx only once the message is durable; 503 when Redis is down (the provider
  retries); 4xx with a reason for bad input.
* `POST /webhooks/unsubscribe/{provider}`: the provider's 080 opt-out events.
* `/api/...` behind a bearer token: inbox per queue, threads, claim, reply, opt-out admin.
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

from gateway.crypto import sign
from gateway.domain.numbers import NumberPlan
from gateway.errors import GatewayError, StoreUnavailable
from gateway.intake import InboundRejected, Intake, OptedOut, inbound_from_fields

log = logging.getLogger(__name__)

MAX_SMS_BODY = 16 * 1024  # an LMS is 2,000 bytes; anything much bigger is not an SMS webhook
REPLAY_WINDOW_S = 300


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
            return {str(k): str(v) for k, v in data.items() if v is not None}
        if media == "application/x-www-form-urlencoded":
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                              encoding=charset, errors="strict")
            return dict(pairs)
    except UnicodeDecodeError:
        raise BadRequest(f"body is not valid {charset}") from None
    except LookupError:
        raise BadRequest(f"unknown charset {charset!r}") from None
    except ValueError as exc:
        raise BadRequest(f"malformed body: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed body: JSON nested too deeply") from None
    raise BadRequest(f"unsupported content type {media!r} (application/json or form)")


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application, intake: Intake, providers: Mapping[str, InboundProvider], *,
               api_token: str, unsubscribe: Mapping[str, Callable[[Mapping[str, str], bytes], list[str]]],
               plan: NumberPlan, draining: Callable[[], bool] = lambda: False) -> None:
    async def inbound(request: web.Request) -> web.Response:
        if draining():
            return _json_error(503, "shutting down, retry")
        provider = providers.get(request.match_info["provider"])
        if provider is None:
            return _json_error(404, "unknown provider")
        if request.content_length is not None and request.content_length > MAX_SMS_BODY:
            return _json_error(413, f"body larger than {MAX_SMS_BODY} bytes")
        body = await request.content.read(MAX_SMS_BODY + 1)
        if len(body) > MAX_SMS_BODY:
            return _json_error(413, f"body larger than {MAX_SMS_BODY} bytes")
        try:
            verify(provider, request.headers, body, time.time())
            fields = parse_body(request.headers.get("Content-Type", ""), body)
            sms = inbound_from_fields(fields, provider.name, plan, time.time())
            result = await intake.accept(sms)
        except Unauthorized as exc:
            return _json_error(401, str(exc))
        except (BadRequest, InboundRejected) as exc:
            return _json_error(400, str(exc))
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable, retry")
        return web.json_response({"status": result.status, "thread": result.thread, "queue": result.queue})

    async def unsubscribed(request: web.Request) -> web.Response:
        parser = unsubscribe.get(request.match_info["provider"])
        if parser is None:
            return _json_error(404, "unknown provider")
        body = await request.content.read(MAX_SMS_BODY + 1)
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
            return await handler(request)
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
        staff = (await _json(request)).get("staff", "")
        if not staff:
            return _json_error(400, "staff is required")
        ok = await intake.claim(request.match_info["id"], str(staff))
        return web.json_response({"claimed": ok}, status=200 if ok else 409)

    async def reply(request: web.Request) -> web.Response:
        data = await _json(request)
        try:
            result = await intake.reply(request.match_info["id"], str(data.get("text", "")), str(data.get("staff", "")))
        except OptedOut as exc:
            return _json_error(409, str(exc))
        except InboundRejected as exc:
            return _json_error(404 if "no thread" in str(exc) else 400, str(exc))
        except StoreUnavailable:
            return _json_error(503, "temporarily unavailable")
        return web.json_response({"result": result}, status=202 if result == "queued" else 409)

    async def optout(request: web.Request) -> web.Response:
        data = await _json(request)
        number = plan.classify(str(data.get("number", ""))).e164
        if not number.startswith("+"):
            return _json_error(400, "number is not a phone number")
        action = data.get("action")
        if action not in ("add", "remove"):
            return _json_error(400, "action must be add or remove")
        await intake.optouts.set(number, action == "add", channel="admin", via=str(data.get("staff", "api")))
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
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
