"""HTTP edge: health endpoints (and, later, webhooks and the staff API).

`GET /healthz`: the process is alive. `GET /health`: every component's state as JSON,
503 while the gateway is not ready (a PBX not logged in, Redis unreachable).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.errors import StoreUnavailable
from gateway.reports import ReportIntake, UnknownProvider

HealthSource = Callable[[], Awaitable[dict[str, Any]]]


def make_app(health: HealthSource, reports: ReportIntake | None = None,
             extra: Callable[[web.Application], None] | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def health_full(_: web.Request) -> web.Response:
        state = await health()
        return web.json_response(state, status=200 if state.get("ready") else 503,
                                 dumps=_dumps)

    async def report(request: web.Request) -> web.Response:
        if reports is None:
            raise web.HTTPNotFound(text="delivery reports are not configured")
        provider = request.match_info["provider"]
        body = await request.read()
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
    app = web.Application(client_max_size=256 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", health_full)
    app.router.add_post("/webhooks/report/{provider}", report)
    if extra is not None:
        extra(app)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False, default=str)


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int, *, shutdown_timeout: float = 5.0) -> None:
        # shutdown_timeout bounds how long cleanup() waits for in-flight requests (aiohttp: 60 s).
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
        self.host, self.port = host, port

    async def start(self) -> tuple[str, int]:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        # aiohttp does not expose the port it bound when asked for port 0.
        for address in self.runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break
        return self.host, self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
