"""HTTP edge: health endpoints, delivery reports, the listeners and their bounds.

`GET /healthz`: the process is alive. `GET /health`: every component's state as JSON,
503 while the gateway is not ready (a PBX not logged in, Redis unreachable). With an internal
listener configured (`http.internal_port`), `/health` and `/metrics` are served only there:
`/health` names the PBX hosts and ports, which is nobody's business on the webhook listener.

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
from typing import Any, Protocol

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway.errors import StoreUnavailable
from gateway.infra.config import GatewayConfig, HttpLimits
from gateway.infra.connlimit import ConnectionGate
from gateway.messaging.reports import ReportIntake, UnknownProvider

log = logging.getLogger(__name__)

HealthSource = Callable[[], Awaitable[dict[str, Any]]]
Routes = Callable[[web.Application], None]

MAX_REPORT_BODY = 256 * 1024  # a provider may batch many delivery reports in one call
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 32\r\n"
         b"Connection: close\r\nRetry-After: 1\r\n\r\n" b'{"error": "too many connections"}')


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
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size, content_type="application/json",
                                         text=json.dumps({"error": f"body larger than {limit} bytes"}))


class BodyTimeout(web.HTTPRequestTimeout, asyncio.TimeoutError):
    """The request body did not arrive within `body_timeout_s`.

    Set on the body's stream: a handler reading it gets this raised and aiohttp answers 408 (an
    HTTPException); if the handler has already answered, aiohttp's read of the unread rest
    treats it as the timeout it is (a TimeoutError) and closes the connection quietly."""

    def __init__(self, seconds: float) -> None:
        super().__init__(content_type="application/json",
                         text=json.dumps({"error": f"request body not received within {seconds:g} s"}))


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus a header timer, a body timer and the connection gate.

    The header timer starts with the first byte of a request and stops when its headers are
    parsed; the body timer starts then (if the body has not all arrived with the headers) and
    stops at the end of the body. aiohttp's keep-alive timer bounds the idle time between
    requests and before the first one (it also closes a connection whose next request's headers
    are still incomplete when it fires).
    """

    def __init__(self, manager: Server, *, loop: asyncio.AbstractEventLoop, limits: HttpLimits,
                 gate: ConnectionGate, **kwargs: Any) -> None:
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


def make_app(health: HealthSource, reports: ReportIntake | None = None, extra: Routes | None = None, *,
             full_health: bool = True) -> web.Application:
    """The public listener's app: /healthz, /health (unless `full_health` is False: it is then on
    the internal listener), delivery reports, and whatever `extra` adds (webhooks, staff API)."""
    async def report(request: web.Request) -> web.Response:
        if reports is None:
            raise web.HTTPNotFound(text="delivery reports are not configured")
        provider = request.match_info["provider"]
        body = await read_body(request, MAX_REPORT_BODY)
        try:
            counts = await reports.handle(provider, request.headers, body)
        except UnknownProvider as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except ValueError as exc:  # ReportRejected: forged or unreadable
            status = 401 if "signature" in str(exc).lower() else 400
            return web.json_response({"error": str(exc)}, status=status)
        except StoreUnavailable:
            # The provider retries on 5xx: nothing is lost while Redis is down.
            return web.json_response({"error": "temporarily unavailable"}, status=503)
        return web.json_response(counts)

    # Webhook bodies are small; a larger one is refused with 413 before it is read.
    app = web.Application(client_max_size=MAX_REPORT_BODY)
    _add_health(app, health, full=full_health)
    app.router.add_post("/webhooks/report/{provider}", report)
    if extra is not None:
        extra(app)
    return app


def make_internal_app(health: HealthSource, extra: Routes | None = None) -> web.Application:
    """The internal listener's app: /healthz, /health and whatever `extra` adds (/metrics)."""
    app = web.Application(client_max_size=1024)  # it takes no bodies
    _add_health(app, health, full=True)
    if extra is not None:
        extra(app)
    return app


def _add_health(app: web.Application, health: HealthSource, *, full: bool) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def health_full(_: web.Request) -> web.Response:
        state = await health()
        return web.json_response(state, status=200 if state.get("ready") else 503,
                                 dumps=_dumps)

    app.router.add_get("/healthz", healthz)  # on every listener: load balancers probe the public one
    if full:
        app.router.add_get("/health", health_full)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


class HttpServer:
    """One listening socket serving `app`, within `limits`."""

    def __init__(self, app: web.Application, host: str, port: int, *, shutdown_timeout: float = 5.0,
                 limits: HttpLimits | None = None, name: str = "http") -> None:
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


class GatewayRoutes(Protocol):
    """What `gateway_listeners` needs of a Gateway (gateway.app.gateway.Gateway)."""

    reports: ReportIntake

    async def health(self) -> dict[str, Any]: ...

    def http_routes(self, app: web.Application, *, metrics: bool = True) -> None: ...

    def metrics_routes(self, app: web.Application) -> None: ...


def gateway_listeners(config: GatewayConfig, gateway: GatewayRoutes, *,
                      shutdown_timeout: float = 5.0) -> tuple[HttpServer, HttpServer | None]:
    """`gateway run`'s listeners: the public one (webhooks, staff API, /healthz), and the internal
    one for /health and /metrics when `http.internal_port` is set (else those are on the public one)."""
    internal = config.http_internal_port is not None

    def routes(app: web.Application) -> None:
        gateway.http_routes(app, metrics=not internal)

    public = HttpServer(make_app(gateway.health, gateway.reports, routes, full_health=not internal),
                        config.http_host, config.http_port, shutdown_timeout=shutdown_timeout,
                        limits=config.http_limits, name="http")
    if config.http_internal_port is None:
        return public, None
    private = HttpServer(make_internal_app(gateway.health, gateway.metrics_routes), config.http_internal_host,
                         config.http_internal_port, shutdown_timeout=shutdown_timeout, limits=config.http_limits,
                         name="internal http")
    return public, private
