"""The queues' backlog as dramatiq's Redis broker lays it out: ready, delayed and held jobs per
queue, for /health (`backlog_report`) and /metrics (`queue_families`) of the gateway and the
worker alike. Read from Redis at request time (synchronous: call it off the event loop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.common import dq_name
from dramatiq.errors import DecodeError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from gateway.domain.backlog import DelayedJob, DelayedSummary, summarize
from gateway.infra.rediskeys import acks_key, dead_letters_key, heartbeats_key, queue_key, queue_messages_key
from gateway.messaging.jobs import QUEUES

# A scrape reads the times of at most this many delayed jobs per queue (the counts are exact).
DELAYED_READ_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    """One queue's jobs in Redis, as dramatiq's Redis broker lays them out (dispatch.lua)."""

    ready: int  # ids on `<queue>`: to run now, not yet fetched by a worker
    delayed: int  # `<queue>.DQ.msgs`: every delayed job, on `<queue>.DQ` or held by a worker
    held: int  # of those, fetched by a worker (`__acks__.<worker>.<queue>.DQ`), in its memory until the eta
    summary: DelayedSummary


def read_backlog(broker: Any) -> dict[str, QueueBacklog]:
    """Every queue's backlog, read from Redis now (synchronous: off the event loop).

    A delayed job stays in `<queue>.DQ.msgs` until its eta has passed and a worker moved it to
    `<queue>`; a worker fetching it from `<queue>.DQ` only moves its id into its acks set. So
    `LLEN <queue>.DQ` misses what workers hold (the night's post-call content, fetched at 21:00
    and kept until 08:00); the hash does not."""
    client, ns = broker.client, broker.namespace
    workers = [w.decode() if isinstance(w, bytes) else str(w) for w in client.zrange(heartbeats_key(ns), 0, -1)]
    out: dict[str, QueueBacklog] = {}
    for queue, spec in QUEUES.items():
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue_key(ns, queue))
        pipe.hlen(queue_messages_key(ns, dq_name(queue)))
        for worker in workers:
            pipe.scard(acks_key(ns, worker, dq_name(queue)))
        ready, delayed, *held = pipe.execute()
        jobs = _delayed_jobs(client, queue_messages_key(ns, dq_name(queue)), spec.max_age_ms)
        out[queue] = QueueBacklog(int(ready), int(delayed), sum(int(h) for h in held), summarize(jobs))
    return out


def _delayed_jobs(client: Any, key: str, queue_max_age_ms: int) -> Iterator[DelayedJob]:
    decode = dramatiq.get_encoder().decode
    for n, (_, raw) in enumerate(client.hscan_iter(key, count=1000)):
        if n >= DELAYED_READ_LIMIT:
            return
        try:
            data = decode(raw)
            options = data.get("options") or {}
            # AgeLimit reads the message's own max_age first, then the actor's (= the queue's).
            yield DelayedJob(
                int(data["message_timestamp"]), int(options["eta"]), int(options.get("max_age") or queue_max_age_ms)
            )
        except (DecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue  # another encoder's or a hand-made entry: counted by HLEN, not summarised


def backlog_report(broker: Any) -> dict[str, dict[str, Any]]:
    """/health's view of `read_backlog`: per queue and in total."""
    now = time.time()
    report: dict[str, dict[str, Any]] = {}
    total = {"ready": 0, "delayed": 0, "held": 0, "expiring": 0}
    for queue, b in read_backlog(broker).items():
        s = b.summary
        report[queue] = {
            "ready": b.ready,
            "delayed": b.delayed,
            "held": b.held,
            "expiring": s.expiring,
            "oldest_delayed_age_s": None if s.oldest_enqueued_ms is None else round(now - s.oldest_enqueued_ms / 1000),
            "next_eta_in_s": None if s.next_eta_ms is None else round(s.next_eta_ms / 1000 - now),
            "last_eta_in_s": None if s.last_eta_ms is None else round(s.last_eta_ms / 1000 - now),
        }
        for key in total:
            total[key] += report[queue][key]
    report["total"] = total
    return report


def queue_families(broker: Any) -> list[Metric]:
    """Queue depth, delayed jobs and dead letters per queue, read from Redis at scrape time, and
    whether Redis answered (gateway and worker alike: every instance reports the same figures).
    Redis down: only `gateway_redis_up 0`."""
    redis_up = GaugeMetricFamily("gateway_redis_up", "1 when Redis answered this scrape's queue reads")
    depth = GaugeMetricFamily(
        "gateway_queue_depth",
        "jobs waiting per queue: ready, and delayed (retries, quiet "
        "hours, open circuits) whether on Redis or held by a worker",
        labels=["queue"],
    )
    delayed = GaugeMetricFamily(
        "gateway_queue_delayed", "delayed jobs per queue, on Redis or held by a worker", labels=["queue"]
    )
    held = GaugeMetricFamily(
        "gateway_queue_delayed_held",
        "delayed jobs a worker fetched and keeps in memory until their time",
        labels=["queue"],
    )
    expiring = GaugeMetricFamily(
        "gateway_queue_delayed_expiring",
        "delayed jobs due at or after their age limit: they will go to the dead letters, not run",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "gateway_queue_delayed_oldest_age_seconds",
        "age of the oldest delayed job (since its first enqueue)",
        labels=["queue"],
    )
    next_eta = GaugeMetricFamily(
        "gateway_queue_delayed_next_eta_timestamp_seconds", "when the first delayed job is due", labels=["queue"]
    )
    last_eta = GaugeMetricFamily(
        "gateway_queue_delayed_last_eta_timestamp_seconds", "when the last delayed job is due", labels=["queue"]
    )
    max_age = GaugeMetricFamily(
        "gateway_queue_max_age_seconds", "the queue's age limit: older jobs are dead-lettered", labels=["queue"]
    )
    dead = GaugeMetricFamily("gateway_dead_letters", "jobs that exhausted their retries, per queue", labels=["queue"])
    try:
        backlog = read_backlog(broker)
        dead_counts = {queue: int(broker.client.zcard(dead_letters_key(broker.namespace, queue))) for queue in QUEUES}
    except RedisError:
        redis_up.add_metric([], 0.0)
        return [redis_up]
    now = time.time()
    for queue, b in backlog.items():
        s = b.summary
        depth.add_metric([queue], b.ready + b.delayed)
        delayed.add_metric([queue], b.delayed)
        held.add_metric([queue], b.held)
        expiring.add_metric([queue], s.expiring)
        max_age.add_metric([queue], QUEUES[queue].max_age_ms / 1000)
        dead.add_metric([queue], dead_counts[queue])
        if s.oldest_enqueued_ms is not None:
            oldest.add_metric([queue], max(0.0, now - s.oldest_enqueued_ms / 1000))
        if s.next_eta_ms is not None and s.last_eta_ms is not None:
            next_eta.add_metric([queue], s.next_eta_ms / 1000)
            last_eta.add_metric([queue], s.last_eta_ms / 1000)
    redis_up.add_metric([], 1.0)
    return [redis_up, depth, delayed, held, expiring, oldest, next_eta, last_eta, max_age, dead]
