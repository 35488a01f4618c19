"""A fake lettering carrier: a real aiohttp server on 127.0.0.1 that follows a CarrierProfile.

It checks every request the way a strict carrier would (method, path, JSON content type,
auth header, every mapped field present and a string, number format, constant fields) and
answers 401/400 with a reason when something is wrong, so a test against it fails when the
adapter builds a bad request. Per recipient number it answers with a result's code, or
misbehaves: `"slow"` (answers after `slow_s`, beyond any lettering deadline), `"httpNNN"`
(that status, e.g. `"http500"`), `"garbage"` (a 200 with an HTML page) or `"close"` (drops
the connection without answering).

Idempotency: a request whose key (the profile's `idempotency_header`) was already used within
`idempotency_window_s` letters nothing again: it is answered at once with the first request's
result and reference (header `Idempotent-Replayed: true`), also while that first one is still
being answered slowly. `deliveries` counts the letterings made per key ("" for requests without
one): a test can tell "lettered exactly once". A key is spent only by a request answered with a
result code (slow ones included), not by a failure (httpNNN, garbage, close).

`behaviour_for`, when set, may choose the behaviour per request (None: the number's), e.g. to
hold exactly one call's request while a test kills the gateway that sent it.

Used by the contract tests and meant to be reused by other tests and benchmarks:

    async with FakeCarrierServer(PROFILES["kt"], "secret", behaviours={...}) as server:
        carrier = HttpCarrier("kt", PROFILES["kt"], server.base_url, "secret")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import string
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from adapters.carrier_http import NUMBER_FIELDS, CarrierProfile, get_dotted
from gateway.domain.models import LetteringResult

#: What the server does for one recipient: answer with a result's code, or misbehave.
Behaviour = LetteringResult | str
MISBEHAVIOURS = ("slow", "garbage", "close")  # plus "httpNNN"

_NUMBER_PATTERNS = {
    "e164": re.compile(r"\+[1-9]\d{6,14}"),
    "national": re.compile(r"0\d{8,10}"),
}
_HTTP_STATUS = re.compile(r"http([1-5]\d\d)")


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the fake carrier received it."""

    received_at: float  # time.perf_counter() when the handler started
    method: str
    path: str  # raw, percent-encoded as sent
    headers: Mapping[str, str]
    raw: bytes
    body: Any  # the parsed JSON, None when it was not JSON
    peer: tuple[str, int] | None  # client address: the same port twice means a kept-alive connection
    error: str  # "" when the request was valid, else the reason sent back with 400/401
    recipient: str  # E.164 of the recipient as understood by the server ("" when unreadable)
    idempotency_key: str = ""  # the profile's idempotency header, "" when absent
    replayed: bool = False  # its key was already spent: answered as the first, nothing lettered


def _path_pattern(template: str) -> re.Pattern[str]:
    """A regex for a profile path: literal text escaped, `{call_id}` one path segment."""
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P<{name}>[^/]+)")
    return re.compile("".join(parts))


class FakeCarrierServer:
    """A strict carrier speaking `profile`, accepting only `token`.

    `behaviours` maps E.164 numbers to a `Behaviour`; other numbers get `default`.
    """

    def __init__(
        self,
        profile: CarrierProfile,
        token: str,
        *,
        behaviours: Mapping[str, Behaviour] | None = None,
        default: Behaviour = LetteringResult.DELIVERED,
        slow_s: float = 5.0,
        idempotency_window_s: float = 600.0,
    ) -> None:
        self.profile = profile
        self.idempotency_window_s = idempotency_window_s
        self.deliveries: Counter[str] = Counter()  # idempotency key -> letterings made
        self._spent: dict[str, tuple[float, LetteringResult, str]] = {}  # key -> (at, result, reference)
        self.behaviour_for: Callable[[ReceivedRequest], Behaviour | None] | None = None
        self.token = token
        self.slow_s = slow_s
        self.behaviours: dict[str, Behaviour] = {}
        self.default = self._checked(default)
        for number, behaviour in (behaviours or {}).items():
            self.behave(number, behaviour)
        self.requests: list[ReceivedRequest] = []
        self._path = _path_pattern(profile.path)
        self._references = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    # ------------------------------------------------------------------ configuration

    def behave(self, number: str, behaviour: Behaviour) -> None:
        """Set what the server does when `number` (E.164) is the recipient."""
        self.behaviours[number] = self._checked(behaviour)

    def code_for(self, result: LetteringResult) -> str:
        """The first code of the profile that means `result`."""
        for code, mapped in self.profile.codes.items():
            if mapped is result:
                return code
        raise ValueError(f"profile has no code for {result.value}")

    def _checked(self, behaviour: Behaviour) -> Behaviour:
        if behaviour in MISBEHAVIOURS or _HTTP_STATUS.fullmatch(str(behaviour)):
            return behaviour
        result = LetteringResult(behaviour)  # ValueError for a typo, early and loud
        self.code_for(result)
        return result

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        """Listen on a free loopback port; return the base URL (no trailing slash)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # the kernel picks a free port: no race with other tests
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        """Release slow handlers and close the server."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCarrierServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received_at = time.perf_counter()
        raw = await request.read()
        body: Any = None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        status, error = self._validate(request, body)
        recipient = self._recipient(body) if not error else ""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        key = request.headers.get(self.profile.idempotency_header, "") if self.profile.idempotency_header else ""
        spent = self._spent.get(key) if key else None
        replayed = not error and spent is not None and received_at - spent[0] < self.idempotency_window_s
        received = ReceivedRequest(
            received_at=received_at,
            method=request.method,
            path=request.rel_url.raw_path,
            headers=dict(request.headers),
            raw=raw,
            body=body,
            peer=tuple(peer[:2]) if peer else None,
            error=error,
            recipient=recipient,
            idempotency_key=key,
            replayed=replayed,
        )
        self.requests.append(received)
        if error:
            return web.json_response({"reason": error}, status=status)
        if replayed and spent is not None:
            return self._result_response(spent[1], spent[2], replayed=True)
        chosen = self.behaviour_for(received) if self.behaviour_for is not None else None
        behaviour = self.behaviours.get(recipient, self.default) if chosen is None else self._checked(chosen)
        # What the carrier does is decided now: a lettering (answered at once or slowly) spends the key.
        result = LetteringResult.DELIVERED if behaviour == "slow" else behaviour
        if isinstance(result, LetteringResult):
            self.deliveries[key] += 1
            reference = self._reference()
            if key:
                self._spent[key] = (received_at, result, reference)
            return await self._answer(request, behaviour, reference)
        return await self._answer(request, behaviour)

    def _validate(self, request: web.Request, body: Any) -> tuple[int, str]:
        """(status, reason) for an invalid request, (200, "") for a valid one."""
        profile = self.profile
        expected_auth = profile.auth_scheme + self.token
        if request.headers.get(profile.auth_header) != expected_auth:
            return 401, f"missing or wrong {profile.auth_header} header"
        if request.method != profile.method:
            return 400, f"method must be {profile.method}, got {request.method}"
        # The raw (still percent-encoded) path: a call id may contain "/" sent as %2F.
        path_match = self._path.fullmatch(request.rel_url.raw_path)
        if path_match is None:
            return 400, f"unknown path {request.rel_url.raw_path}"
        if request.content_type != "application/json":
            return 400, f"content type must be application/json, got {request.content_type}"
        if not isinstance(body, dict):
            return 400, "body must be a UTF-8 JSON object"
        for ours, theirs in profile.fields.items():
            value = get_dotted(body, theirs)
            if not isinstance(value, str):
                return 400, f"field {theirs} is missing or not a string"
            # "to" must be a number; an unknown caller number may be sent as "".
            needs_number = ours in NUMBER_FIELDS and (value or ours == "to")
            if needs_number and not _NUMBER_PATTERNS[profile.number_format].fullmatch(value):
                return 400, f"field {theirs} is not a {profile.number_format} number"
        for name, constant in profile.extra_fields.items():
            if get_dotted(body, name) != constant:
                return 400, f"field {name} must be {constant!r}"
        path_call_id = path_match.groupdict().get("call_id")
        if (
            path_call_id is not None
            and "call_id" in profile.fields
            and unquote(path_call_id) != get_dotted(body, profile.fields["call_id"])
        ):
            return 400, "call id in the path and in the body differ"
        return 200, ""

    def _recipient(self, body: Any) -> str:
        """The recipient as E.164, whatever format the profile sends it in."""
        number = str(get_dotted(body, self.profile.fields["to"]))
        if self.profile.number_format == "national" and number.startswith("0"):
            return "+82" + number[1:]
        return number

    async def _answer(self, request: web.Request, behaviour: Behaviour, reference: str = "") -> web.StreamResponse:
        if behaviour == "slow":
            # Wait on the stop event rather than sleep, so stop() never hangs on a slow answer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.slow_s)
            return self._result_response(LetteringResult.DELIVERED, reference)
        if behaviour == "garbage":
            return web.Response(
                status=200,
                text="<html><body>Service Temporarily Unavailable</body></html>",
                content_type="text/html",
            )
        if behaviour == "close":
            # Drop the TCP connection without a byte of answer, like a crashed front end.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        status = _HTTP_STATUS.fullmatch(str(behaviour))
        if status is not None:
            code = int(status.group(1))
            # A redirect points elsewhere on this server: a client that follows it shows up
            # as a second request (on an unknown path) in `requests`.
            headers = {"Location": "/redirected"} if 300 <= code < 400 else None
            return web.Response(status=code, text="configured failure", headers=headers)
        return self._result_response(LetteringResult(behaviour), reference)

    def _reference(self) -> str:
        return f"fake-{next(self._references)}"

    def _result_response(self, result: LetteringResult, reference: str = "", *, replayed: bool = False) -> web.Response:
        answer: dict[str, Any] = {}
        _put(answer, self.profile.code_path, self.code_for(result))
        if self.profile.reference_path:
            _put(answer, self.profile.reference_path, reference or self._reference())
        if self.profile.message_path:
            _put(answer, self.profile.message_path, result.value)
        return web.json_response(answer, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value
