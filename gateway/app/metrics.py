"""The gateway process's /metrics collector: figures read at scrape time from the state its
components keep anyway (AMI clients, pipeline, outbox, intake, rules, SMTP, queues).

It reads a `GatewayState`, not `gateway.app.gateway.Gateway` itself: the gateway builds its
registry, so naming the class here would make the two modules import each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from dramatiq.brokers.redis import RedisBroker
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.calls.pbx.client import PbxClient
from gateway.calls.pipeline import CallPipeline
from gateway.inbox.intake import Intake
from gateway.inbox.smtp import SmtpIntake
from gateway.infra.metrics import sends_family
from gateway.infra.wire import Wire
from gateway.messaging.backlog import queue_families
from gateway.messaging.jobs import Enqueuer
from gateway.outbox.guard import Outbox


class RulesStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


class GatewayState(Protocol):
    """What the collector reads of a gateway (read-only)."""

    @property
    def clients(self) -> Sequence[PbxClient]: ...
    @property
    def pipeline(self) -> CallPipeline: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def intake(self) -> Intake: ...
    @property
    def rules(self) -> RulesStatus: ...
    @property
    def smtp(self) -> SmtpIntake | None: ...
    @property
    def broker(self) -> RedisBroker: ...
    @property
    def wire(self) -> Wire: ...
    @property
    def enqueuer(self) -> Enqueuer: ...
    @property
    def http_counts(self) -> Mapping[tuple[str, int], int]: ...
    def records_status(self) -> Mapping[str, int]: ...


def records_families(emitter: Mapping[str, int] | None, writer: Mapping[str, Any] | None = None) -> Iterator[Metric]:
    """The SQL archive's figures: the emitter's (facts to the Redis stream `gw:records`) in the
    gateway and the worker, the writer's (stream to SQL) in the worker."""
    if emitter:
        facts = CounterMetricFamily(
            "gateway_records_facts",
            "facts for the records store by what became of them: recorded (handed over by the flows), "
            "emitted (in the Redis stream), dropped (the buffer was full), errors (failed batches to Redis)",
            labels=["outcome"],
        )
        for outcome in ("recorded", "emitted", "dropped", "errors"):
            facts.add_metric([outcome], emitter.get(outcome, 0))
        yield facts
        pending = GaugeMetricFamily("gateway_records_pending", "facts buffered in this process, not yet in Redis")
        pending.add_metric([], emitter.get("pending", 0))
        yield pending
    if writer:
        written = CounterMetricFamily(
            "gateway_records_writer",
            "the records writer: facts written (new rows), duplicates (already stored), bad entries, "
            "batches, errors (failed reads or writes, retried)",
            labels=["outcome"],
        )
        for outcome in ("written", "duplicates", "bad", "batches", "errors"):
            written.add_metric([outcome], writer.get(outcome, 0))
        yield written
        lag = GaugeMetricFamily(
            "gateway_records_writer_lag", "facts in the Redis stream gw:records not yet written to the records store"
        )
        lag.add_metric([], writer.get("lag", 0))
        yield lag


class GatewayCollector(Collector):
    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        events = CounterMetricFamily(
            "gateway_ami_events",
            "AMI events read, by PBX and event name (discarded noise included)",
            labels=["pbx", "event"],
        )
        frames = CounterMetricFamily("gateway_ami_frames", "AMI frames read", labels=["pbx"])
        reconnects = CounterMetricFamily(
            "gateway_ami_reconnects",
            "AMI sessions logged in again after the first (one per PBX restart or network loss)",
            labels=["pbx"],
        )
        attempts = CounterMetricFamily(
            "gateway_ami_connect_attempts", "AMI connection attempts, refused and failed ones included", labels=["pbx"]
        )
        connected = GaugeMetricFamily("gateway_ami_connected", "1 when logged in to the PBX", labels=["pbx"])
        silence = GaugeMetricFamily(
            "gateway_ami_seconds_since_last_frame", "seconds since the PBX last wrote", labels=["pbx"]
        )
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

        sends = CounterMetricFamily(
            "gateway_outbox_decisions",
            "outbox guard decisions and send results (kind:channel:result)",
            labels=["decision"],
        )
        for decision, count in gw.outbox.counts.items():
            sends.add_metric([decision], count)
        yield sends

        yield sends_family(gw.outbox.providers.totals())

        inbound = CounterMetricFamily(
            "gateway_inbound_messages",
            "citizens' messages by route (queue) and outcome",
            labels=["queue", "status", "keyword"],
        )
        for (queue, status, keyword), count in gw.intake.counts.items():
            inbound.add_metric([queue, status, keyword], count)
        yield inbound

        optouts = CounterMetricFamily(
            "gateway_optouts",
            "opt-outs and opt-ins recorded by this process, by channel (sms keyword, 080 unsubscribe, api)",
            labels=["action", "channel"],
        )
        for (action, channel), count in gw.intake.optouts.counts.items():
            optouts.add_metric([action, channel], count)
        yield optouts

        rules = gw.rules.status()
        reload_failed = GaugeMetricFamily(
            "gateway_rules_reload_failed", "1 while the last rules reload failed (the last good rules stay in force)"
        )
        reload_failed.add_metric([], 1.0 if rules["last_error"] else 0.0)
        loaded = GaugeMetricFamily("gateway_rules_loaded_timestamp_seconds", "when the rules in force were loaded")
        loaded.add_metric([], float(rules["loaded_at"]))
        yield reload_failed
        yield loaded

        if gw.smtp is not None:
            smtp = CounterMetricFamily(
                "gateway_smtp_replies",
                "SMTP intake replies by command and code (550 refused, 451 Redis down, 421 draining)",
                labels=["command", "code"],
            )
            for (command, code), count in dict(gw.smtp.handler.replies).items():
                smtp.add_metric([command, code], count)
            yield smtp

        yield from queue_families(gw.broker)

        wire = CounterMetricFamily(
            "gateway_redis_wire_events",
            "the real-time Redis connection: connects, "
            "connect failures, drops after a command timeout or a READONLY answer, losses",
            labels=["event"],
        )
        for event, count in gw.wire.events.items():
            wire.add_metric([event], count)
        yield wire

        queued = CounterMetricFamily("gateway_enqueue", "jobs put on the queues", labels=["result"])
        queued.add_metric(["ok"], gw.enqueuer.enqueued)
        queued.add_metric(["failed"], gw.enqueuer.failed)
        yield queued

        http = CounterMetricFamily(
            "gateway_http_responses", "HTTP responses by route and status", labels=["route", "status"]
        )
        for (route, http_status), count in gw.http_counts.items():
            http.add_metric([route, str(http_status)], count)
        yield http

        yield from records_families(gw.records_status())
