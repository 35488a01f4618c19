"""The staff console's listener, assembled from a Gateway's parts (composition: nothing here
decides anything).

The console runs in the gateway process, on a listener of its own (`console.host/port`), apart
from the public webhooks so that a reverse proxy keeps it inside the city's network. It shares
the gateway's Redis pool, inbox flow and staff directory; its live updates come from one Redis
subscription per process (`gateway.inbox.desk.EventHub`) fanned out to every open page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.console.app import ConsoleDeps, make_console_app
from gateway.domain.numbers import NumberPlan
from gateway.errors import GatewayError
from gateway.inbox.desk import Desk, EventHub
from gateway.infra.config import ConsoleConfig, GatewayConfig
from gateway.infra.http import HttpServer
from gateway.rules.directory import read_directory

if TYPE_CHECKING:
    from gateway.app.gateway import Gateway

log = logging.getLogger(__name__)


def console_deps(gateway: Gateway, console: ConsoleConfig) -> ConsoleDeps:
    """What the console's pages use, from the gateway's parts."""
    rules = gateway.rules
    plan = NumberPlan(
        outside_line_prefixes=rules.rules.lettering.outside_line_prefixes,
        extension_pattern=rules.rules.lettering.extension_pattern,
    )

    # directory.yaml read once per rules (re)load, not on every inbox page (3.6 ms with the sample
    # rules, 19 ms with 4,000 phones: ops/bench console).
    cached: dict[float, dict[str, str]] = {}

    def department_names() -> dict[str, str]:
        if rules.loaded_at not in cached:
            cached.clear()
            cached[rules.loaded_at] = read_department_names()
        return dict(cached[rules.loaded_at])

    def read_department_names() -> dict[str, str]:
        try:
            doc, _ = read_directory(rules.directory)
        except (OSError, ValueError):
            return {}
        data = doc.data if doc is not None else None
        names: dict[str, str] = {}
        if isinstance(data, Mapping) and isinstance(data.get("departments"), list):
            for dept in data["departments"]:
                if isinstance(dept, Mapping) and isinstance(dept.get("id"), str) and isinstance(dept.get("name"), str):
                    names[dept["id"]] = dept["name"]
        return names

    def queue_names() -> dict[str, str]:
        # routing.yaml's queues first, in the file's order (what staff work from every day),
        # then every department's own queue (replies to a department's message go there).
        routing = rules.get_routing()
        names = {q: info.name for q, info in routing.queues.items()} if routing is not None else {}
        for dept, name in sorted(department_names().items(), key=lambda item: item[1]):
            names.setdefault(f"dept:{dept}", name)
        return names

    return ConsoleDeps(
        config=console,
        intake=gateway.intake,
        directory=gateway.staff_directory,
        access=gateway.access_log,
        sessions=gateway.sessions,
        plan=plan,
        health=gateway.health,
        extras={
            "desk": Desk(gateway.intake, waiting_s=console.waiting_minutes * 60.0),
            "events": EventHub(gateway.redis_url),
            "console_rules": rules.get_console,
            "queue_names": queue_names,
            "department_names": department_names,
            "records_store": gateway.staff_store,
            "recent": gateway.recent,
        },
    )


def console_app(gateway: Gateway, console: ConsoleConfig) -> web.Application:
    """The console's app, with its live-event hub started and stopped with it."""
    deps = console_deps(gateway, console)
    app = make_console_app(deps)
    hub: EventHub = deps.extras["events"]
    desk: Desk = deps.extras["desk"]
    tasks: list[asyncio.Task[None]] = []

    async def reindex() -> None:
        # Threads stored before the console's indexes existed join them (idempotent, ZADD NX;
        # SCAN in pages, in the background: the console answers meanwhile).
        try:
            seen = await desk.reindex()
            log.info("console: %d threads checked against the inbox indexes", seen)
        except GatewayError as exc:
            log.warning("console: inbox indexes not checked (%s); threads join them at their next message", exc)

    async def start_hub(_: web.Application) -> None:
        await hub.start()
        tasks.append(asyncio.get_running_loop().create_task(reindex(), name="console-reindex"))

    async def stop_hub(_: web.Application) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.stop()

    app.on_startup.append(start_hub)
    app.on_cleanup.append(stop_hub)
    return app


def console_listener(config: GatewayConfig, gateway: Gateway, *, shutdown_timeout: float = 2.0) -> HttpServer | None:
    """The console's listener (None when `console:` is not configured)."""
    if config.console is None:
        return None
    return HttpServer(
        console_app(gateway, config.console),
        config.console.host,
        config.console.port,
        shutdown_timeout=shutdown_timeout,
        limits=config.http_limits,
        name="console",
    )
