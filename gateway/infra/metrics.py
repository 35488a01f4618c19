"""`GET /metrics` (Prometheus): read from the components' own counters at scrape time.

One registry per `Gateway` (not prometheus-client's global one), so several gateways in one
process (tests, the demo) never share or clash. Most figures are collected on scrape from the
state the components keep anyway (AMI clients, pipeline, outbox, intake, queues); only the
lettering latency is a histogram observed as it happens. Names follow Prometheus's conventions
(base units, `_total` on counters: CounterMetricFamily adds it); `promtool check metrics` runs
on real scrapes in tests/system/test_promtool.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.errors import DecodeError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.domain.backlog import DelayedJob, DelayedSummary, summarize
from gateway.messaging.jobs import QUEUES

# Seconds (Prometheus's base unit): 0.5 ms to 2.5 s, dense where the lettering budget is.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayCollector(Collector):
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        events = CounterMetricFamily("gateway_ami_events", "AMI events read, by PBX and event name "
                                     "(discarded noise included)", labels=["pbx", "event"])
        frames = CounterMetricFamily("gateway_ami_frames", "AMI frames read", labels=["pbx"])
        reconnects = CounterMetricFamily("gateway_ami_reconnects", "AMI sessions logged in again after the first "
                                         "(one per PBX restart or network loss)", labels=["pbx"])
        attempts = CounterMetricFamily("gateway_ami_connect_attempts", "AMI connection attempts, refused and "
                                       "failed ones included", labels=["pbx"])
        connected = GaugeMetricFamily("gateway_ami_connected", "1 when logged in to the PBX", labels=["pbx"])
        silence = GaugeMetricFamily("gateway_ami_seconds_since_last_frame", "seconds since the PBX last wrote",
                                    labels=["pbx"])
        for client in gw.clients:
            st = client.status()
            pbx = st["name"]
            frames.add_metric([pbx], st["frames_in"])
            events.add_metric([pbx, "_tracked"], st["events_dispatched"])
            for name, count in st["events_discarded_by_name"].items():
                events.add_metric([pbx, name], count)
            reconnects.add_metric([pbx], st["reconnects"])
            attempts.add_metric([pbx], st["connect_attempts"])
            connected.add_metric([pbx], 1.0 if st["authenticated"] else 0.0)
            if st["seconds_since_last_event"] is not None:
                silence.add_metric([pbx], st["seconds_since_last_event"])
        yield from (events, frames, reconnects, attempts, connected, silence)

        calls = CounterMetricFamily("gateway_calls", "finished calls", labels=["pbx", "direction", "disposition"])
        for (pbx, direction, disposition), count in gw.pipeline.calls_by.items():
            calls.add_metric([pbx, direction, disposition], count)
        yield calls

        sends = CounterMetricFamily("gateway_outbox_decisions", "outbox guard decisions and send results "
                                    "(kind:channel:result)", labels=["decision"])
        for decision, count in gw.outbox.counts.items():
            sends.add_metric([decision], count)
        yield sends

        yield sends_family(gw.outbox.providers.totals())

        inbound = CounterMetricFamily("gateway_inbound_messages", "citizens' messages by route (queue) and outcome",
                                      labels=["queue", "status", "keyword"])
        for (queue, status, keyword), count in gw.intake.counts.items():
            inbound.add_metric([queue, status, keyword], count)
        yield inbound

        optouts = CounterMetricFamily("gateway_optouts", "opt-outs and opt-ins recorded by this process, by channel "
                                      "(sms keyword, 080 unsubscribe, api)", labels=["action", "channel"])
        for (action, channel), count in gw.intake.optouts.counts.items():
            optouts.add_metric([action, channel], count)
        yield optouts

        rules = gw.rules.status()
        reload_failed = GaugeMetricFamily("gateway_rules_reload_failed", "1 while the last rules reload failed "
                                          "(the last good rules stay in force)")
        reload_failed.add_metric([], 1.0 if rules["last_error"] else 0.0)
        loaded = GaugeMetricFamily("gateway_rules_loaded_timestamp_seconds", "when the rules in force were loaded")
        loaded.add_metric([], float(rules["loaded_at"]))
        yield reload_failed
        yield loaded

        if gw.smtp is not None:
            smtp = CounterMetricFamily("gateway_smtp_replies", "SMTP intake replies by command and code "
                                       "(550 refused, 451 Redis down, 421 draining)", labels=["command", "code"])
            for (command, code), count in dict(gw.smtp.handler.replies).items():
                smtp.add_metric([command, code], count)
            yield smtp

        yield from queue_families(gw.broker)

        wire = CounterMetricFamily("gateway_redis_wire_events", "the real-time Redis connection: connects, "
                                   "connect failures, drops after a command timeout or a READONLY answer, losses",
                                   labels=["event"])
        for event, count in gw.wire.events.items():
            wire.add_metric([event], count)
        yield wire

        queued = CounterMetricFamily("gateway_enqueue", "jobs put on the queues", labels=["result"])
        queued.add_metric(["ok"], gw.enqueuer.enqueued)
        queued.add_metric(["failed"], gw.enqueuer.failed)
        yield queued

        http = CounterMetricFamily("gateway_http_responses", "HTTP responses by route and status",
                                   labels=["route", "status"])
        for (route, status), count in gw.http_counts.items():
            http.add_metric([route, str(status)], count)
        yield http


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
    workers = [w.decode() if isinstance(w, bytes) else str(w) for w in client.zrange(f"{ns}:__heartbeats__", 0, -1)]
    out: dict[str, QueueBacklog] = {}
    for queue, spec in QUEUES.items():
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"{ns}:{queue}")
        pipe.hlen(f"{ns}:{queue}.DQ.msgs")
        for worker in workers:
            pipe.scard(f"{ns}:__acks__.{worker}.{queue}.DQ")
        ready, delayed, *held = pipe.execute()
        jobs = _delayed_jobs(client, f"{ns}:{queue}.DQ.msgs", spec.max_age_ms)
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
            yield DelayedJob(int(data["message_timestamp"]), int(options["eta"]),
                             int(options.get("max_age") or queue_max_age_ms))
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
            "ready": b.ready, "delayed": b.delayed, "held": b.held, "expiring": s.expiring,
            "oldest_delayed_age_s": None if s.oldest_enqueued_ms is None else round(now - s.oldest_enqueued_ms / 1000),
            "next_eta_in_s": None if s.next_eta_ms is None else round(s.next_eta_ms / 1000 - now),
            "last_eta_in_s": None if s.last_eta_ms is None else round(s.last_eta_ms / 1000 - now)}
        for key in total:
            total[key] += report[queue][key]
    report["total"] = total
    return report


def queue_families(broker: Any) -> list[Metric]:
    """Queue depth, delayed jobs and dead letters per queue, read from Redis at scrape time, and
    whether Redis answered (gateway and worker alike: every instance reports the same figures).
    Redis down: only `gateway_redis_up 0`."""
    redis_up = GaugeMetricFamily("gateway_redis_up", "1 when Redis answered this scrape's queue reads")
    depth = GaugeMetricFamily("gateway_queue_depth", "jobs waiting per queue: ready, and delayed (retries, quiet "
                              "hours, open circuits) whether on Redis or held by a worker", labels=["queue"])
    delayed = GaugeMetricFamily("gateway_queue_delayed", "delayed jobs per queue, on Redis or held by a worker",
                                labels=["queue"])
    held = GaugeMetricFamily("gateway_queue_delayed_held", "delayed jobs a worker fetched and keeps in memory "
                             "until their time", labels=["queue"])
    expiring = GaugeMetricFamily("gateway_queue_delayed_expiring", "delayed jobs due at or after their age limit: "
                                 "they will go to the dead letters, not run", labels=["queue"])
    oldest = GaugeMetricFamily("gateway_queue_delayed_oldest_age_seconds", "age of the oldest delayed job "
                               "(since its first enqueue)", labels=["queue"])
    next_eta = GaugeMetricFamily("gateway_queue_delayed_next_eta_timestamp_seconds", "when the first delayed job "
                                 "is due", labels=["queue"])
    last_eta = GaugeMetricFamily("gateway_queue_delayed_last_eta_timestamp_seconds", "when the last delayed job "
                                 "is due", labels=["queue"])
    max_age = GaugeMetricFamily("gateway_queue_max_age_seconds", "the queue's age limit: older jobs are dead-lettered",
                                labels=["queue"])
    dead = GaugeMetricFamily("gateway_dead_letters", "jobs that exhausted their retries, per queue", labels=["queue"])
    try:
        backlog = read_backlog(broker)
        dead_counts = {queue: int(broker.client.zcard(f"{broker.namespace}:{queue}.XQ")) for queue in QUEUES}
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


def sends_family(totals: dict[tuple[str, str, str], int]) -> CounterMetricFamily:
    """Provider answers by channel (lettering, alimtalk, sms, lms), provider and result."""
    sends = CounterMetricFamily("gateway_sends", "requests answered by a provider, by channel, provider and result",
                                labels=["channel", "provider", "result"])
    for (channel, provider, result), count in totals.items():
        sends.add_metric([channel, provider, result], count)
    return sends


def new_registry(gateway: Any) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    latency = Histogram("gateway_lettering_latency_seconds", "AMI DialBegin receipt to the carrier request",
                        buckets=LATENCY_BUCKETS_S, registry=registry)
    return registry, latency


def exposition(registry: CollectorRegistry) -> bytes:
    """The scrape body. Reads Redis synchronously: call it off the event loop."""
    output: bytes = generate_latest(registry)
    return output
