"""`gateway run`: the gateway process's life. Start the listeners, the SMTP intake and the AMI
clients, tell systemd READY, feed its watchdog, and drain on SIGTERM within the configured bound."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from gateway.app.consoleapp import console_listener
from gateway.app.gateway import Gateway
from gateway.app.httpapps import gateway_listeners
from gateway.infra.config import GatewayConfig
from gateway.infra.sdnotify import Notifier
from gateway.infra.sinks import LogSink
from gateway.records.store import check_ready

log = logging.getLogger("gateway")


async def run_gateway(config: GatewayConfig) -> int:
    """`gateway run`: start, tell systemd READY, feed its watchdog, drain on SIGTERM within the bound."""
    # A records schema behind this release: refuse to start (a GatewayError: exit 2, the message
    # names the command to run). An empty database is created here.
    await check_ready(config.records_url(os.environ))
    notifier = Notifier()
    gateway = Gateway(config, LogSink(logging.getLogger("gateway.decisions")))
    # Intake already answers 503 when the listener closes, so in-flight requests are short: a
    # tenth of the bound for them, most of it for the pipeline (wait_for below takes 0.85).
    # /health and /metrics go to the internal listener when one is configured.
    http, internal = gateway_listeners(config, gateway, shutdown_timeout=config.shutdown_timeout_s / 10)
    # The staff console, on its own listener (None when `console:` is not configured).
    console = console_listener(config, gateway, shutdown_timeout=config.shutdown_timeout_s / 10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, gateway.rules.reload)
    watchdog = loop.create_task(notifier.watchdog_task(), name="watchdog")
    host, port = await http.start()
    if internal is not None:
        host, port = await internal.start()  # where /health is, for the messages below
    smtp = await gateway.start_smtp()
    if smtp:
        log.info("SMTP intake on %s:%d", *smtp)
    if console is not None:
        c_host, c_port = await console.start()
        log.info("staff console on http://%s:%d/", c_host, c_port)
    await gateway.start()
    # Everything imported and built so far lives for the whole run: keep it out of the
    # collector's full passes, which otherwise pause the event loop for tens of ms.
    gc.freeze()
    # READY once every PBX is logged in, or after ready_timeout_s anyway: citizens' SMS intake
    # must not wait for a PBX that is down (/health says 503 and why until it is back).
    logged_in = await _first(gateway.wait_ready(config.ready_timeout_s), stop)
    state = "ready" if logged_in else "running without every PBX or Redis (see /health)"
    notifier.ready(f"{state}; health on http://{host}:{port}/health")
    log.info(
        "gateway %s: %d pbx, health on http://%s:%d/health, rules %s",
        state,
        len(gateway.clients),
        host,
        port,
        gateway.rules.rules.version,
    )
    await stop.wait()
    started = loop.time()
    log.info("stopping: draining for at most %.1f s", config.shutdown_timeout_s)
    notifier.stopping("draining")
    if console is not None:
        # First: the console's live streams end (staff pages reconnect to the other gateway);
        # nothing a citizen or the PBX sends goes through it.
        await console.stop()
    try:  # stop() refuses intake first (503/421) while the HTTP listener is still up
        await asyncio.wait_for(gateway.stop(config.shutdown_timeout_s * 0.7), config.shutdown_timeout_s * 0.85)
    except TimeoutError:
        log.error("shutdown: the gateway did not stop within %.1f s", config.shutdown_timeout_s * 0.85)
    await http.stop()
    if internal is not None:
        await internal.stop()
    watchdog.cancel()
    log.info("stopped in %.1f s: %s", loop.time() - started, gateway.pipeline.status()["outbox"])
    return 0


async def _first(work: Coroutine[Any, Any, bool], stop: asyncio.Event) -> bool:
    """`work`'s result, or False as soon as `stop` is set (SIGTERM while starting)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return False
