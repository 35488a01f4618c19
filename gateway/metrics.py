"""`GET /metrics` (Prometheus): read from the components' own counters at scrape time.

One registry per `Gateway` (not prometheus-client's global one), so several gateways in one
process (tests, the demo) never share or clash. Most figures are collected on scrape from the
state the components keep anyway (AMI clients, pipeline, outbox, intake, queues); only the
lettering latency is a histogram observed as it happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.jobs import QUEUES

LATENCY_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500)


class GatewayCollector(Collector):
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        events = CounterMetricFamily("gateway_ami_events", "AMI events read, by PBX and event name "
                                     "(discarded noise included)", labels=["pbx", "event"])
        frames = CounterMetricFamily("gateway_ami_frames", "AMI frames read", labels=["pbx"])
        reconnects = CounterMetricFamily("gateway_ami_reconnects", "AMI reconnections", labels=["pbx"])
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
            connected.add_metric([pbx], 1.0 if st["authenticated"] else 0.0)
            if st["seconds_since_last_event"] is not None:
                silence.add_metric([pbx], st["seconds_since_last_event"])
        yield from (events, frames, reconnects, connected, silence)

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


def queue_families(broker: Any) -> list[Metric]:
    """Queue depth and dead letters per queue, read from Redis at scrape time, and whether Redis
    answered (gateway and worker alike). Redis down: only `gateway_redis_up 0`."""
    redis_up = GaugeMetricFamily("gateway_redis_up", "1 when Redis answered this scrape's queue reads")
    depth = GaugeMetricFamily("gateway_queue_depth", "jobs waiting (ready and delayed) per queue", labels=["queue"])
    dead = GaugeMetricFamily("gateway_dead_letters", "jobs that exhausted their retries, per queue", labels=["queue"])
    try:
        client, ns = broker.client, broker.namespace
        for queue in QUEUES:
            # dramatiq keeps delayed jobs (retries, quiet hours) in the list "<queue>.DQ".
            depth.add_metric([queue], int(client.llen(f"{ns}:{queue}")) + int(client.llen(f"{ns}:{queue}.DQ")))
            dead.add_metric([queue], int(client.zcard(f"{ns}:{queue}.XQ")))
    except RedisError:
        redis_up.add_metric([], 0.0)
        return [redis_up]
    redis_up.add_metric([], 1.0)
    return [redis_up, depth, dead]


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
    latency = Histogram("gateway_lettering_latency_ms", "AMI DialBegin receipt to the carrier request (ms)",
                        buckets=LATENCY_BUCKETS_MS, registry=registry)
    return registry, latency


def exposition(registry: CollectorRegistry) -> bytes:
    """The scrape body. Reads Redis synchronously: call it off the event loop."""
    output: bytes = generate_latest(registry)
    return output
