"""HTTP server machinery: bounded listeners, whole-body reads, health handlers, error answers.

Nothing here knows a flow: the routes are declared by the edge modules (`gateway.inbox.webhooks`,
`gateway.inbox.staffapi`, `gateway.messaging.reports`) and assembled into the public and internal
applications in one place, the composition root (`gateway.app.httpapps`).

`GET /healthz`: the process is alive. `GET /health`: every component's state as JSON, 503 while
the gateway is not ready (a PBX not logged in, Redis unreachable); both from a `HealthSource`.

`error_response` is the one place a `GatewayError` becomes an HTTP answer: its class's
`http_status` and its `http_body()` as JSON. No edge chooses a status by reading error text.

Every listener bounds what one client can hold (`HttpLimits`): the time to send the request
headers, the time to send the body, the idle time between requests, and the number of
connections open at once. aiohttp itself only has the keep-alive timer, so the header and body
timers and the connection limit live in `GuardedHandler`, its per-connection protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway.errors import GatewayError
from gateway.infra.config import HttpLimits
from gateway.infra.connlimit import ConnectionGate
from gateway.infra.edgelog import MalformedLog

log = logging.getLogger(__name__)

HealthSource = Callable[[], Awaitable[dict[str, Any]]]
Routes = Callable[[web.Application], None]  # adds an edge's routes (and its app hooks) to an app

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 32\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
    b'{"error": "too many connections"}'
)


def json_error(status: int, message: str) -> web.Response:
    """An error answer that is not an exception (unknown provider, draining): ``{"error": message}``."""
    return web.json_response({"error": message}, status=status)


def error_response(exc: GatewayError, *, message: str | None = None) -> web.Response:
    """The HTTP answer to a deliberate error: the class's `http_status`, its `http_body()` as JSON.

    `message` replaces the body's ``error`` text where a route words it its own way (the
    citizens' webhooks add ", retry" to a 503)."""
    body = exc.http_body()
    if message is not None:
        body["error"] = message
    return web.json_response(body, status=exc.http_status, dumps=_readable if exc.http_readable_json else json.dumps)


def refused(malformed: MalformedLog, request: web.Request, exc: GatewayError) -> web.Response:
    """`error_response` for bad input, noted as one rate-limited WARNING per route and kind (the
    input itself is never logged: `gateway.infra.edgelog`)."""
    resource = request.match_info.route.resource
    malformed.note(f"http {resource.canonical if resource else '-'}", f"{exc.http_status} {type(exc).__name__}")
    return error_response(exc)


def _readable(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, however many TCP reads it arrives in (Content-Length or chunked).

    `request.content.read(n)` returns only what has arrived so far: a signed webhook cut
    short by a segment boundary would fail its signature check. This reads until the end of
    the body. More than `limit` bytes: 413 (raised, aiohttp answers it), as soon as the
    declared length or the bytes read so far say so, without reading the rest.
    """
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, request.content_length)
    body = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise _too_large(limit, len(body))


def _too_large(limit: int, size: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_size=limit,
        actual_size=size,
        content_type="application/json",
        text=json.dumps({"error": f"body larger than {limit} bytes"}),
    )


class BodyTimeout(web.HTTPRequestTimeout, asyncio.TimeoutError):
    """The request body did not arrive within `body_timeout_s`.

    Set on the body's stream: a handler reading it gets this raised and aiohttp answers 408 (an
    HTTPException); if the handler has already answered, aiohttp's read of the unread rest
    treats it as the timeout it is (a TimeoutError) and closes the connection quietly."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            content_type="application/json",
            text=json.dumps({"error": f"request body not received within {seconds:g} s"}),
        )


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus a header timer, a body timer and the connection gate.

    The header timer starts with the first byte of a request and stops when its headers are
    parsed; the body timer starts then (if the body has not all arrived with the headers) and
    stops at the end of the body. aiohttp's keep-alive timer bounds the idle time between
    requests and before the first one (it also closes a connection whose next request's headers
    are still incomplete when it fires).
    """

    def __init__(
        self,
        manager: Server,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: HttpLimits,
        gate: ConnectionGate,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.keepalive_timeout_s, **kwargs)
        self._limits, self._gate = limits, gate
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit():
            # Refused before aiohttp sees it: a short answer, then close (no parsing, no timers).
            assert isinstance(transport, asyncio.Transport)
            transport.write(_BUSY)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.release()
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete
            self._cancel_header_timer()
            if self._messages:
                payload = self._messages[-1][1]
                if not payload.is_eof() and self._body_timer is None:
                    self._body_timer = self._loop.call_later(self._limits.body_timeout_s, self._body_late, payload)
                    payload.on_eof(self._cancel_body_timer)
        elif data and self._header_timer is None and self._body_timer is None and not self._force_close:
            # The first bytes of a request whose headers are not complete yet.
            self._header_timer = self._loop.call_later(self._limits.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        log.debug("request headers not received within %g s: closing the connection", self._limits.header_timeout_s)
        self.force_close()

    def _body_late(self, payload: StreamReader) -> None:
        self._body_timer = None
        if payload.is_eof():
            return
        log.debug("request body not received within %g s", self._limits.body_timeout_s)
        payload.set_exception(BodyTimeout(self._limits.body_timeout_s))
        self.close()  # the rest of the body never came: no further request on this connection

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _stop_timers(self) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()


def add_health_routes(app: web.Application, health: HealthSource, *, full: bool) -> None:
    """`GET /healthz` (always) and `GET /health` (when `full`: else it is on the internal listener)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def health_full(_: web.Request) -> web.Response:
        state = await health()
        return web.json_response(state, status=200 if state.get("ready") else 503, dumps=_dumps)

    app.router.add_get("/healthz", healthz)  # on every listener: load balancers probe the public one
    if full:
        app.router.add_get("/health", health_full)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class HttpServer:
    """One listening socket serving `app`, within `limits`."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        shutdown_timeout: float = 5.0,
        limits: HttpLimits | None = None,
        name: str = "http",
    ) -> None:
        # shutdown_timeout bounds how long cleanup() waits for in-flight requests (aiohttp: 60 s).
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        self.host, self.port = host, port
        self.limits = limits or HttpLimits()
        self.gate = ConnectionGate(self.limits.max_connections, f"{name} listener")
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        await self.runner.setup()
        manager = self.runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()

        # Not web.TCPSite: it builds aiohttp's plain RequestHandler, which has no header or body
        # timer and no connection limit.
        def protocol() -> GuardedHandler:
            return GuardedHandler(manager, loop=loop, limits=self.limits, gate=self.gate, access_log=None)

        self._server = await loop.create_server(protocol, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])  # the one bound when asked for port 0
        return self.host, self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; the runner closes the open ones
        await self.runner.cleanup()
