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
from redis.exceptions import RedisError

from gateway.calls.pbx.client import PbxClient
from gateway.calls.pipeline import CallPipeline
from gateway.inbox.intake import Intake
from gateway.inbox.smtp import SmtpIntake
from gateway.infra import redisurl
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


def replica_ack_family(timeouts: Mapping[str, int]) -> Metric:
    """Writes that fewer replicas than `redis.min_replicas_ack` acknowledged in time (answered
    503 / 451, or a lettering claim failed closed), by what: inbound, optout, claim."""
    family = CounterMetricFamily(
        "gateway_redis_replica_ack_timeouts",
        "durable writes not acknowledged by enough replicas within redis.replica_ack_timeout_ms",
        labels=["what"],
    )
    for what in ("inbound", "optout", "claim"):
        family.add_metric([what], timeouts.get(what, 0))
    return family


def redis_answered(families: Sequence[Metric]) -> bool:
    """Whether `queue_families` found Redis answering (its `gateway_redis_up` sample is 1): a
    scrape then reads INFO too, and does not wait out a second timeout when Redis is gone."""
    return any(f.name == "gateway_redis_up" and any(s.value == 1 for s in f.samples) for f in families)


def replication_families(client: Any) -> Iterator[Metric]:
    """The primary's `INFO replication`, read at scrape time with the broker's client (bounded by
    its socket timeout), for the failover, lost-replica and lag alerts (ops/prometheus/alerts.yml):
    the same figures /health shows under `redis.replication`. Every instance reports the
    primary it reaches, so the alerts aggregate with max(). Redis down or INFO refused (an ACL
    without `+info`, see ops/redis.conf): only `gateway_redis_replication_readable 0`."""
    readable = GaugeMetricFamily(
        "gateway_redis_replication_readable", "1 when this scrape read INFO replication from the primary"
    )
    try:
        info = client.info("replication")
    except RedisError:
        readable.add_metric([], 0.0)
        yield readable
        return
    readable.add_metric([], 1.0)
    yield readable
    report = redisurl.replication_report(info, redisurl.client_address(client))
    primary = GaugeMetricFamily(
        "gateway_redis_primary_info",
        "1 for the Redis node this instance uses as its primary (a new address: a failover)",
        labels=["address", "role"],
    )
    primary.add_metric([report["primary"], str(report["role"])], 1.0)
    replicas = GaugeMetricFamily(
        "gateway_redis_connected_replicas", "replicas connected to the primary (INFO connected_slaves)"
    )
    replicas.add_metric([], report["connected_replicas"])
    lag = GaugeMetricFamily(
        "gateway_redis_replication_lag_bytes",
        "bytes of the primary's replication stream a replica has not acknowledged yet",
        labels=["replica"],
    )
    ack_age = GaugeMetricFamily(
        "gateway_redis_replication_ack_age_seconds",
        "seconds since a replica last acknowledged (it does every second while its link is up)",
        labels=["replica"],
    )
    for replica in report["replicas"]:
        lag.add_metric([replica["address"]], replica["lag_bytes"])
        ack_age.add_metric([replica["address"]], float(replica["lag_s"] or 0))
    yield from (primary, replicas, lag, ack_age)


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
        # Shown from the start (alerts on a rate): calls taken over from a dead peer gateway, and calls
        # lost with one (it died holding the claim; the phone stopped ringing before the takeover).
        for decision, count in {"taken_over": 0, "owner_died": 0, **gw.outbox.counts}.items():
            sends.add_metric([decision], count)
        yield sends
        if gw.outbox.liveness is not None:
            beating = GaugeMetricFamily(
                "gateway_liveness_beating",
                "1 while this gateway instance's heartbeat is in Redis (its lettering leases are respected)",
            )
            beating.add_metric([], 1 if gw.outbox.liveness.beating else 0)
            yield beating

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

        queues = queue_families(gw.broker)
        yield from queues
        if redis_answered(queues):  # else a second wait for a Redis that just timed out
            yield from replication_families(gw.broker.client)

        wire = CounterMetricFamily(
            "gateway_redis_wire_events",
            "the real-time Redis connection: connects, "
            "connect failures, drops after a command timeout or a READONLY answer, losses",
            labels=["event"],
        )
        for event, count in gw.wire.events.items():
            wire.add_metric([event], count)
        yield wire
        yield replica_ack_family(gw.intake.ack.timeouts)

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
