"""Every HTTP route of the gateway, assembled in one place (a composition root).

The edge modules declare their routes (`add_routes(app, ...)`); this module puts them on the
listeners:

* public listener (`make_app`): `/healthz`, `/health` (unless an internal listener has it),
  `POST /webhooks/report/{provider}` (`gateway.messaging.reports`), and, for a Gateway
  (`add_gateway_routes`), `POST /webhooks/sms|unsubscribe/{provider}`
  (`gateway.inbox.webhooks`), the staff API `/api/...` (`gateway.inbox.staffapi`) and `/metrics`
  (unless an internal listener has it);
* internal listener (`make_internal_app`, when `http.internal_port` is set): `/healthz`,
  `/health` and `/metrics`. `/health` names the PBX hosts and ports, which is nobody's business
  on the webhook listener.

`gateway_listeners` builds both for `gateway run`. The server machinery (bounded listeners,
body reads, health handlers, error answers) is `gateway.infra.http`, which knows no flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.domain.numbers import NumberPlan
from gateway.inbox import staffapi, webhooks
from gateway.inbox.intake import Intake
from gateway.inbox.webhooks import InboundProvider, UnsubscribeParser
from gateway.infra.config import GatewayConfig
from gateway.infra.http import HealthSource, HttpServer, Routes, add_health_routes
from gateway.infra.metrics import exposition
from gateway.messaging import reports as delivery_reports
from gateway.messaging.reports import MAX_REPORT_BODY, ReportIntake
from gateway.ports import AccessLog, StaffDirectory
from gateway.staff.throttle import Throttle


def make_app(
    health: HealthSource, reports: ReportIntake | None = None, extra: Routes | None = None, *, full_health: bool = True
) -> web.Application:
    """The public listener's app: /healthz, /health (unless `full_health` is False: it is then on
    the internal listener), delivery reports, and whatever `extra` adds (a Gateway's
    `http_routes`: webhooks, staff API, /metrics)."""
    # Webhook bodies are small; a larger one is refused with 413 before it is read.
    app = web.Application(client_max_size=MAX_REPORT_BODY)
    add_health_routes(app, health, full=full_health)
    delivery_reports.add_routes(app, reports)
    if extra is not None:
        extra(app)
    return app


def make_internal_app(health: HealthSource, extra: Routes | None = None) -> web.Application:
    """The internal listener's app: /healthz, /health and whatever `extra` adds (/metrics)."""
    app = web.Application(client_max_size=1024)  # it takes no bodies
    add_health_routes(app, health, full=True)
    if extra is not None:
        extra(app)
    return app


def add_gateway_routes(
    app: web.Application,
    *,
    intake: Intake,
    providers: Mapping[str, InboundProvider],
    unsubscribe: Mapping[str, UnsubscribeParser],
    directory: StaffDirectory,
    access: AccessLog,
    throttle: Throttle | None,
    plan: NumberPlan,
    draining: Callable[[], bool],
    count: Callable[[str, int], None],
    registry: CollectorRegistry | None,
) -> None:
    """A Gateway's routes on the public listener: the citizens' webhooks, the staff API, and
    /metrics unless `registry` is None (served on the internal listener then). `count` is told
    every answer's route and status (`gateway_http_responses_total`). The staff API checks each
    person's token in `directory`, writes its access records to `access` and throttles refused
    tokens with `throttle`."""

    # Every answer is counted as it is sent (errors and unknown routes included). A signal, not
    # a middleware: any middleware makes aiohttp wrap every request in a chain of handler
    # layers, ~10 % of a citizen's webhook on the benchmark.
    async def counted(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        count(resource.canonical if resource else "-", response.status)

    app.on_response_prepare.append(counted)
    if registry is not None:
        add_metrics_route(app, registry)
    webhooks.add_routes(app, intake, providers, unsubscribe=unsubscribe, plan=plan, draining=draining)
    staffapi.add_routes(app, intake, directory=directory, access=access, plan=plan, throttle=throttle)


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """GET /metrics (Prometheus), on the public listener or on the internal one."""

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(exposition, registry)  # the collector reads Redis
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app.router.add_get("/metrics", metrics)


class ServedGateway(Protocol):
    """What `gateway_listeners` needs of a Gateway (`gateway.app.gateway.Gateway`)."""

    reports: ReportIntake

    async def health(self) -> dict[str, Any]: ...

    def http_routes(self, app: web.Application, *, metrics: bool = True) -> None: ...

    def metrics_routes(self, app: web.Application) -> None: ...


def gateway_listeners(
    config: GatewayConfig, gateway: ServedGateway, *, shutdown_timeout: float = 5.0
) -> tuple[HttpServer, HttpServer | None]:
    """`gateway run`'s listeners: the public one (webhooks, staff API, /healthz), and the internal
    one for /health and /metrics when `http.internal_port` is set (else those are on the public one)."""
    internal = config.http_internal_port is not None

    def routes(app: web.Application) -> None:
        gateway.http_routes(app, metrics=not internal)

    public = HttpServer(
        make_app(gateway.health, gateway.reports, routes, full_health=not internal),
        config.http_host,
        config.http_port,
        shutdown_timeout=shutdown_timeout,
        limits=config.http_limits,
        name="http",
    )
    if config.http_internal_port is None:
        return public, None
    private = HttpServer(
        make_internal_app(gateway.health, gateway.metrics_routes),
        config.http_internal_host,
        config.http_internal_port,
        shutdown_timeout=shutdown_timeout,
        limits=config.http_limits,
        name="internal http",
    )
    return public, private
