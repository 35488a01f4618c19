"""Start, watch, wait for and stop the threads that run the worker's actors (dramatiq's
`Worker`): used by `gateway worker`, the demo, replay and the tests alike."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import dramatiq
import redis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker

from gateway.infra.rediskeys import acks_pattern, queue_key
from gateway.messaging.jobs import QUEUES
from gateway.messaging.runtime import WorkerRuntime
from gateway.messaging.workerstop import release_event_loop, stop_within

log = logging.getLogger(__name__)


def start_worker(broker: RedisBroker, *, threads: int = 4, idle_ms: int = 200) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=idle_ms)
    worker.start()
    return worker


def stop_worker(worker: dramatiq.Worker, timeout_s: float = 30.0) -> None:
    """Stop an in-process worker (demo, replay) within `timeout_s`. When Redis is gone or paused
    its consumers cannot hand back the messages they held: that is logged, not raised, and the
    actors' event loop is stopped all the same (the process could not exit otherwise); Redis's
    own bookkeeping puts those messages back on their queue once the worker's heartbeat lapses."""
    result = stop_within(worker, timeout_s)
    if not result.complete:
        log.warning(
            "worker stopped without Redis (%s): its unfinished messages return to their queue "
            "when its heartbeat lapses",
            result.detail,
        )
        if not release_event_loop():
            log.error("the actors' event loop does not stop: a job blocks it")


async def wait_idle(
    broker: RedisBroker, runtime: WorkerRuntime, *, timeout_s: float = 30.0, settle_s: float = 0.3
) -> bool:
    """Wait until every queue is empty (delayed messages aside) and no job is running."""
    client: Any = broker.client
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        try:
            pending = sum(int(client.llen(queue_key(broker.namespace, q))) for q in QUEUES)
            acks = sum(int(client.scard(k)) for k in client.scan_iter(acks_pattern(broker.namespace)))
        except redis.RedisError as exc:
            log.warning("cannot see the queues (%s); not waiting for them", exc)
            return False
        if pending == 0 and acks == 0 and runtime.in_flight == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                return True
        else:
            quiet_since = None
        await asyncio.sleep(0.05)
    return False


def worker_alive(worker: dramatiq.Worker, probe_s: float = 2.0) -> bool:
    """Every consumer and worker thread alive, and the actors' event loop answers within `probe_s`.

    What systemd's watchdog is fed on: a wedged loop (an actor blocking it) stops the pings."""
    threads = [*worker.consumers.values(), *worker.workers]
    if not all(t.is_alive() for t in threads):
        return False
    loop_thread = get_event_loop_thread()
    if loop_thread is None:
        return True
    try:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop_thread.loop).result(timeout=probe_s)
    except Exception:
        return False
    return True
