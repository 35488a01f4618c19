"""`gateway worker`'s composition: which providers, rules and sinks the worker runtime gets
(`build_worker`, also used by the demo, replay and tests), and the process itself
(`run_worker`: consume until SIGTERM, report to systemd, stop within its budget).

The runtime and its actors are `gateway.messaging.runtime`; starting and stopping their
threads is `gateway.messaging.workers`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import dramatiq
import redis

from gateway.app.gateway import Overrides, RulesHolder, build_alimtalk, build_sms, reply_provider
from gateway.app.recordsthread import RecordsThread
from gateway.app.workerhttp import WorkerHttp
from gateway.domain.notify import NotifyRules
from gateway.errors import GatewayError
from gateway.inbox.replies import Replies
from gateway.infra.config import GatewayConfig
from gateway.infra.sdnotify import Notifier
from gateway.infra.sinks import LogSink
from gateway.messaging.jobs import QUEUES, Enqueuer, make_broker
from gateway.messaging.runtime import WorkerRuntime, declare_actors
from gateway.messaging.workers import start_worker, worker_alive
from gateway.messaging.workerstop import EXIT_STOP_INCOMPLETE, stop_within
from gateway.outbox.guard import Outbox
from gateway.outbox.providerstats import publish
from gateway.outbox.store import RedisOutboxStore, connect
from gateway.ports import DecisionSink, RecordSink
from gateway.records.retention import PurgeScheduler

log = logging.getLogger(__name__)


def build_worker(
    config: GatewayConfig,
    *,
    environ: Mapping[str, str],
    redis_url: str,
    sink: DecisionSink | None = None,
    overrides: Overrides | None = None,
    records: RecordSink | None = None,
) -> tuple[Any, WorkerRuntime]:
    """The broker with its actors and the runtime they use (`gateway worker`, replay, demo).

    The broker is returned as `Any` (a `RedisBroker`): callers read its synchronous Redis client,
    whose answers redis-py types as `Any | bytes | str | None` while ours are bytes."""
    over = overrides or Overrides()
    sealer = config.sealer(environ)
    broker = make_broker(
        redis_url,
        namespace=over.queue_namespace or config.queue_namespace,
        heartbeat_timeout_ms=config.heartbeat_timeout_ms,
        maintenance_chance=config.maintenance_chance,
    )
    holder = RulesHolder(over.rules_dir or config.rules_dir)
    alimtalk = {n: over.alimtalk.get(n) or build_alimtalk(n, s, environ) for n, s in config.alimtalk.items()}
    sms = {n: over.sms.get(n) or build_sms(n, s, environ) for n, s in config.sms.items()}
    alimtalk.update({n: p for n, p in over.alimtalk.items() if n not in alimtalk})
    sms.update({n: p for n, p in over.sms.items() if n not in sms})
    hash_key = config.number_key(environ)

    def outbox() -> Outbox:
        # Built on the worker's own event loop (the async Redis client belongs to it).
        return Outbox(
            RedisOutboxStore(connect(redis_url, timeout_s=2.0)),
            {},
            hash_key=hash_key,
            dedupe_ttl_s=config.dedupe_ttl_s,
            alimtalk=alimtalk,
            sms=sms,
            device_memory_s=holder.messaging.device_memory_days * 86400,
        )

    enqueuer = Enqueuer(broker, sealer)
    provider = reply_provider(config, over)

    def replies(built: Outbox) -> Replies:
        return Replies(built, enqueuer, sealer, provider)

    redirect = over.notify_webhook_url

    def notify() -> NotifyRules:
        # The rules in force; the demo sends every queue's notification webhook to its stand-in.
        rules = holder.get_notify()
        return rules.with_webhook_url(redirect) if redirect else rules

    def queue_names() -> dict[str, str]:
        return {q: info.name for q, info in holder.routing.queues.items()} if holder.routing else {}

    runtime = WorkerRuntime(
        outbox,
        sealer,
        enqueuer,
        sink,
        environ=environ,
        replies=replies,
        notify=notify,
        queue_names=queue_names,
        records=records,
    )
    declare_actors(broker, runtime)
    return broker, runtime


def _records_ready(config: GatewayConfig) -> None:
    """The records database is this release's (an empty one is created), else a GatewayError."""
    import asyncio

    from gateway.records.store import check_ready

    asyncio.run(check_ready(config.records_url(os.environ)))


def run_worker(config: GatewayConfig, *, threads: int | None = None) -> int:
    """`gateway worker`: consume the queues until SIGTERM/SIGINT, then finish running jobs.

    Under systemd (Type=notify) it reports READY once consuming, feeds the watchdog while its
    threads and event loop are alive, and publishes its providers' circuit state for /health."""
    url = config.resolved_redis_url(os.environ)
    if not url:
        raise GatewayError(f"no Redis: set {config.redis_url_env} or redis.url in {config.source}")
    _records_ready(config)  # a records schema behind this release: refuse to start (exit 2)
    notifier = Notifier()
    # The SQL archive: the writer draining gw:records, and the actors' own facts (sends' states,
    # automatic replies), on a thread and event loop of their own.
    records = RecordsThread(
        url,
        config.records_url(os.environ),
        batch_size=config.records.batch_size,
        stream_maxlen=config.records.stream_maxlen,
        purge=lambda engine, client: PurgeScheduler.from_config(config, engine, client),
    )
    broker, runtime = build_worker(
        config,
        environ=os.environ,
        redis_url=url,
        sink=LogSink(logging.getLogger("gateway.decisions")),
        records=records.emitter,
    )
    count = threads or config.worker_threads
    records.start()
    worker = start_worker(broker, threads=count, idle_ms=1000)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    http: WorkerHttp | None = None
    if config.worker_http_port is not None:
        http = WorkerHttp(
            broker,
            runtime,
            worker,
            config.worker_http_host,
            config.worker_http_port,
            limits=config.http_limits,
            records=records,
        )
        host, port = http.start()
        log.info("worker health on http://%s:%d/health", host, port)
    stop = threading.Event()
    signalled: list[float] = []  # when the first SIGTERM/SIGINT came: the stop's budget starts there

    def on_signal(*_: Any) -> None:
        signalled.append(time.monotonic())
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    notifier.ready(f"consuming {', '.join(QUEUES)} with {count} threads")
    log.info("worker running: queues %s, %d threads", ", ".join(QUEUES), count)
    period = min(5.0, notifier.watchdog_s / 2) if notifier.watchdog_s else 5.0

    def monitor() -> None:
        # Off the main thread: a Redis that does not answer holds a publish for its socket
        # timeouts, and the main thread must start the stop as soon as the signal comes.
        while not stop.wait(period):
            if worker_alive(worker):
                if notifier.watchdog_s:
                    notifier.notify("WATCHDOG=1")
            else:
                log.error("worker wedged: a thread died or the event loop does not answer; watchdog not fed")
            try:
                publish(broker.client, broker.namespace, worker_id, runtime.provider_report())
            except redis.RedisError as exc:
                log.warning("cannot publish provider status: %s", exc)

    threading.Thread(target=monitor, name="worker-monitor", daemon=True).start()
    while not stop.wait(1.0):
        pass
    return _stop(config, worker, http, notifier, signalled[0] if signalled else time.monotonic(), records=records)


def _stop(
    config: GatewayConfig,
    worker: dramatiq.Worker,
    http: WorkerHttp | None,
    notifier: Notifier,
    signalled_at: float,
    *,
    records: RecordsThread | None = None,
) -> int:
    """`gateway worker`'s stop, within shutdown_timeout_s of the signal whatever Redis does:
    0 once every job finished or went back to Redis; otherwise the process ends at once with
    EXIT_STOP_INCOMPLETE (threads still waiting for Redis, and dramatiq's event loop, would keep
    it alive)."""
    budget = config.shutdown_timeout_s
    log.info("worker stopping: finishing running jobs for at most %.0f s", budget)
    notifier.stopping("finishing running jobs")
    reserve = min(1.0, budget / 5)  # closing the HTTP listener and the logs
    # The records' share: the actors' last facts to Redis and the writer's batch in hand (what
    # it does not write stays in the stream for the next worker).
    records_s = min(3.0, budget / 5) if records is not None else 0.0
    result = stop_within(worker, budget - reserve - records_s - (time.monotonic() - signalled_at))
    if records is not None:
        records.stop(max(0.2, min(records_s, budget - reserve - (time.monotonic() - signalled_at))))
    if http is not None:
        http.stop()
    if result.complete:
        log.info("worker stopped: running jobs finished, held jobs handed back to Redis")
        return 0
    log.error(
        "worker stop incomplete (%s): the jobs it held return to their queues once its heartbeat lapses "
        "(%.0f s); exiting with code %d",
        result.detail,
        config.heartbeat_timeout_ms / 1000,
        EXIT_STOP_INCOMPLETE,
    )
    logging.shutdown()  # flush: os._exit skips it
    os._exit(EXIT_STOP_INCOMPLETE)
