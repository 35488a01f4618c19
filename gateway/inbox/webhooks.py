"""HTTP edge for citizens' messages: the providers' webhooks (the staff API is `staffapi`).

* `POST /webhooks/sms/{provider}`: inbound SMS, JSON or form bodies in UTF-8 or EUC-KR/CP949,
  signed with HMAC-SHA256 over `timestamp.public_url.body` (replay window, constant-time
  compare). 2xx only once the message is durable; 503 when Redis is down (the provider
  retries); 4xx with a reason for bad input.
* `POST /webhooks/unsubscribe/{provider}`: the provider's 080 opt-out events (401 when forged,
  400 when unreadable).

Every error is JSON ``{"error": ...}`` with the status its class carries
(`gateway.infra.http.error_response`). Bad input is a 4xx with a reason, logged as one
rate-limited WARNING per route and kind, never with the input (`gateway.infra.edgelog`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from gateway.domain.inputs import text_problem
from gateway.domain.numbers import NumberPlan
from gateway.errors import BadRequest, RecipientUnknown, ReportRejected, StoreUnavailable, Unauthorized
from gateway.inbox.intake import InboundRejected, Intake, inbound_from_fields
from gateway.infra.crypto import same_secret, sign
from gateway.infra.edgelog import MalformedLog, install_parser_filter
from gateway.infra.http import error_response, json_error, read_body, refused

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


UnsubscribeParser = Callable[[Mapping[str, str], bytes], list[str]]  # raises ReportRejected / ReportForged
RETRY = "temporarily unavailable, retry"  # the 503 text of the citizens' webhooks


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
    if not same_secret(given.strip().lower(), expected):
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
            pairs = parse_qsl(
                body.decode("ascii"),
                keep_blank_values=True,
                strict_parsing=bool(body),
                encoding=charset,
                errors="strict",
            )
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


def add_routes(
    app: web.Application,
    intake: Intake,
    providers: Mapping[str, InboundProvider],
    *,
    unsubscribe: Mapping[str, UnsubscribeParser],
    plan: NumberPlan,
    draining: Callable[[], bool] = lambda: False,
) -> None:
    """The citizens' webhooks on `app`, and, while `app` runs, aiohttp's HTTP parser errors
    logged quietly (one rate-limited line per kind, as for the handlers' bad input)."""
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

    async def inbound(request: web.Request) -> web.Response:
        if draining():
            return json_error(503, "shutting down, retry")
        provider = providers.get(request.match_info["provider"])
        if provider is None:
            return json_error(404, "unknown provider")
        # The whole body, however many TCP reads it takes; 413 (JSON) past the limit, declared or not.
        body = await read_body(request, MAX_SMS_BODY)
        try:
            verify(provider, request.headers, body, time.time())
            fields = parse_body(request.headers.get("Content-Type", ""), body)
            sms = inbound_from_fields(fields, provider.name, plan, time.time())
            result = await intake.accept(sms)
        except (Unauthorized, BadRequest, InboundRejected, RecipientUnknown) as exc:
            return refused(malformed, request, exc)
        except StoreUnavailable as exc:
            return error_response(exc, message=RETRY)
        answer = {"status": result.status, "thread": result.thread, "queue": result.queue}
        if result.reply:  # why no automatic reply is sent ("not_mobile")
            answer["reply"] = result.reply
        return web.json_response(answer)

    async def unsubscribed(request: web.Request) -> web.Response:
        parser = unsubscribe.get(request.match_info["provider"])
        if parser is None:
            return json_error(404, "unknown provider")
        body = await read_body(request, MAX_SMS_BODY)  # the whole body, however many TCP reads
        try:
            numbers = parser(request.headers, body)
            for number in numbers:
                await intake.optouts.set(number, True, channel="080", via=request.match_info["provider"])
        except ReportRejected as exc:  # ReportForged (401) or unreadable (400)
            return error_response(exc)
        except StoreUnavailable as exc:
            return error_response(exc, message=RETRY)
        return web.json_response({"opted_out": len(numbers)})

    app.router.add_post("/webhooks/sms/{provider}", inbound)
    app.router.add_post("/webhooks/unsubscribe/{provider}", unsubscribed)
