"""Composition root: the one place that knows which adapters exist and wires them.

`Gateway` owns the Redis client, the carriers, the outbox, the call pipeline, one AMI
client per PBX and the HTTP listener, and starts/stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from redis.exceptions import RedisError

from adapters.carrier_http import HttpCarrier
from adapters.nhn_alimtalk import NhnAlimtalk
from adapters.nhn_sms import NhnSms, parse_unsubscribe
from adapters.sandbox import SandboxCarrier
from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.httpapps import add_gateway_routes, add_metrics_route
from gateway.app.metrics import GatewayCollector
from gateway.calls.pbx.client import AmiSettings, PbxClient
from gateway.calls.pbx.mapping import TRACKED_EVENTS
from gateway.calls.pipeline import CallPipeline
from gateway.domain.audit import audit_key
from gateway.domain.guidance import ConsoleRules
from gateway.domain.notify import NotifyRules
from gateway.domain.numbers import NumberPlan
from gateway.domain.postcall import MessagingRules
from gateway.domain.routing import RoutingRules, parse_window
from gateway.domain.rules import Rules
from gateway.domain.staff import LoginPolicy
from gateway.errors import ConfigError, RulesError, StoreUnavailable
from gateway.inbox.intake import Intake
from gateway.inbox.smtp import SmtpIntake, settings_from_config
from gateway.inbox.webhooks import InboundProvider
from gateway.infra import redisurl
from gateway.infra.config import ConsoleConfig, GatewayConfig, PbxConfig
from gateway.infra.metrics import lettering_latency, new_registry
from gateway.infra.recent import RecentDecisions, Tee
from gateway.infra.wire import ReplicaAck, Wire
from gateway.messaging.backlog import backlog_report
from gateway.messaging.jobs import Enqueuer, dead_letter_counts, make_broker
from gateway.messaging.reports import ReportIntake, build_parsers
from gateway.outbox.guard import Outbox
from gateway.outbox.liveness import Liveness
from gateway.outbox.providerstats import read_published
from gateway.outbox.store import RedisOutboxStore, connect, warm_up
from gateway.ports import AlimtalkProvider, DecisionSink, LetteringCarrier, RecordSink, SmsProvider
from gateway.records.emitter import StreamRecordSink
from gateway.records.store import RecordsStore
from gateway.rules.ruleset import RuleSet, load_all
from gateway.staff.accounts import SqlStaffDirectory
from gateway.staff.audit import SqlAccessLog
from gateway.staff.sessions import RedisSessions
from gateway.staff.throttle import Throttle

log = logging.getLogger(__name__)
T = TypeVar("T")


def _build(what: str, name: str, spec: Mapping[str, Any], builders: Mapping[str, Callable[[], T]]) -> T:
    kind = str(spec.get("kind"))
    builder = builders.get(kind)
    if builder is None:
        raise ConfigError(f"{what} {name!r}: unknown kind {kind!r} ({', '.join(builders)})")
    return builder()


def build_carrier(name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> LetteringCarrier:
    builders: dict[str, Callable[[], LetteringCarrier]] = {
        "sandbox": lambda: SandboxCarrier.from_spec(name, spec),
        "http": lambda: HttpCarrier.from_spec(name, spec, environ),
    }
    return _build("carrier", name, spec, builders)


def build_alimtalk(name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> AlimtalkProvider:
    builders: dict[str, Callable[[], AlimtalkProvider]] = {
        "sandbox": lambda: SandboxAlimtalk.from_spec(name, spec),
        "nhn": lambda: NhnAlimtalk.from_spec(name, spec, environ),
    }
    return _build("alimtalk provider", name, spec, builders)


def build_sms(name: str, spec: Mapping[str, Any], environ: Mapping[str, str]) -> SmsProvider:
    builders: dict[str, Callable[[], SmsProvider]] = {
        "sandbox": lambda: SandboxSms.from_spec(name, spec),
        "nhn": lambda: NhnSms.from_spec(name, spec, environ),
    }
    return _build("sms provider", name, spec, builders)


def _secret(environ: Mapping[str, str], variable: str, where: str) -> str:
    value = environ.get(variable, "")
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return value


def _unsubscribe_parser(secret: str) -> Callable[[Mapping[str, str], bytes], list[str]]:
    def parse(headers: Mapping[str, str], body: bytes) -> list[str]:
        return parse_unsubscribe(headers, body, secret)

    return parse


class RulesHolder:
    """The live rules; a reload that fails keeps the last good rules in place.

    Start-up and reload both go through `gateway.rules.ruleset.load_all`, which lists the files.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ruleset = load_all(directory)
        self.rules: Rules = ruleset.rules
        self.messaging: MessagingRules = ruleset.messaging
        self.routing: RoutingRules | None = ruleset.routing
        self.notify: NotifyRules = ruleset.notify
        self.console: ConsoleRules = ruleset.console
        self.loaded_at = time.time()
        self.last_error = ""
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(
            sorted(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in self.directory.glob("*.yaml") if p.is_file()
            )
        )

    def reload_if_changed(self) -> bool | None:
        """Reload when a rules file changed since the last look; None when nothing changed."""
        seen = self._fingerprint()
        if seen == self._seen:
            return None
        self._seen = seen
        return self.reload()

    async def watch(self, every_s: float = 2.0) -> None:
        """Hot reload on file change (SIGHUP reloads at once)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except OSError as exc:
                log.warning("rules directory not readable: %s", exc)

    def get_routing(self) -> RoutingRules | None:
        return self.routing

    def get_notify(self) -> NotifyRules:
        return self.notify

    def get_console(self) -> ConsoleRules:
        return self.console

    def get(self) -> Rules:
        return self.rules

    def get_messaging(self) -> MessagingRules:
        return self.messaging

    def reload(self) -> bool:
        try:
            ruleset: RuleSet = load_all(self.directory)
        except RulesError as exc:
            self.last_error = str(exc)
            log.error("rules reload failed, keeping version %s:\n%s", self.rules.version, exc)
            return False
        self.rules, self.messaging = ruleset.rules, ruleset.messaging
        self.routing, self.notify, self.console = ruleset.routing, ruleset.notify, ruleset.console
        self.loaded_at, self.last_error = time.time(), ""
        log.info("rules reloaded: version %s", ruleset.rules.version)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "version": self.rules.version,
            "routing_version": self.routing.version if self.routing else None,
            "console_version": self.console.version or None,
            "loaded_at": self.loaded_at,
            "last_error": self.last_error,
            "extensions": self.rules.directory.extension_count(),
        }


@dataclass
class Overrides:
    """What `demo`, `replay` and tests change in a loaded configuration."""

    redis_url: str | None = None
    rules_dir: Path | None = None
    pbx_address: tuple[str, int] | None = None  # point every PBX at this AMI server
    carriers: dict[str, LetteringCarrier] = field(default_factory=dict)  # prebuilt adapters by name
    alimtalk: dict[str, AlimtalkProvider] = field(default_factory=dict)
    sms: dict[str, SmsProvider] = field(default_factory=dict)
    queue_namespace: str | None = None
    ami: dict[str, Any] = field(default_factory=dict)  # AmiSettings field overrides (backoff, ping)
    # Longer Redis command timeouts on the real-time connections, for a process slowed down on
    # purpose (`ops.bench.instructions` runs the gateway under valgrind, ~50 times slower).
    redis_timeout_s: float | None = None
    # Every queue's notification webhook (notify.yaml) goes here instead: the demo's loopback
    # stand-in for the complaint system.
    notify_webhook_url: str | None = None
    # Where the flows' facts for the SQL archive go instead of the Redis stream `gw:records`
    # (replay: straight into a store, or nowhere: never a live deployment's stream).
    records: RecordSink | None = None
    # The records database of the staff accounts and access records, instead of the configuration's.
    records_url: str | None = None


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        sink: DecisionSink,
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Overrides | None = None,
    ) -> None:
        self.config = config
        # The last decisions, numbers masked, for the console's status page (this process's only).
        self.recent = RecentDecisions(200)
        sink = Tee(sink, self.recent)
        self.sink = sink
        self.environ = dict(os.environ if environ is None else environ)
        self.over = overrides or Overrides()
        self.rules = RulesHolder(self.over.rules_dir or config.rules_dir)
        redis_url = self.over.redis_url or config.resolved_redis_url(self.environ)
        if not redis_url:
            raise ConfigError(f"no Redis: set {config.redis_url_env} or redis.url in {config.source}")
        self.redis_url = redis_url
        self.redis = connect(redis_url)
        # The real-time path's lean connection (claims, settlements, inbound accepts), with the
        # same 0.25 s command timeout as `connect`.
        slow = self.over.redis_timeout_s or 0.0
        self.wire = Wire.from_url(redis_url, timeout_s=max(0.25, slow), connect_timeout_s=max(1.0, slow))
        # Durable means replicated when `redis.min_replicas_ack` > 0 (WAIT after the accept,
        # opt-out and lettering-claim writes); shared, so /metrics counts the timeouts once.
        self.ack = ReplicaAck(config.min_replicas_ack, config.replica_ack_timeout_ms)
        # Those writes and their WAITs on a connection of their own: a WAIT holds its connection
        # (the whole timeout while a replica is missing), and the heartbeats, settlements and
        # other real-time commands on `wire` must not queue behind it.
        self.replicated_wire: Wire | None = None
        if config.min_replicas_ack:
            self.replicated_wire = Wire.from_url(redis_url, timeout_s=max(0.25, slow), connect_timeout_s=max(1.0, slow))
        self.store = RedisOutboxStore(self.redis, self.wire, ack=self.ack, replicated_wire=self.replicated_wire)
        # The SQL archive's facts: buffered here, XADDed to `gw:records` by a background task on
        # its own small pool (2 s timeouts: a batch never waits behind, or delays, the real-time
        # path), written to SQL by the worker (`gateway.records.writer`).
        self.records_client = None
        self.emitter: StreamRecordSink | None = None
        if self.over.records is not None:
            self.records: RecordSink = self.over.records
        else:
            self.records_client = connect(redis_url, timeout_s=max(2.0, slow), max_connections=2)
            self.emitter = StreamRecordSink(self.records_client, maxlen=config.records.stream_maxlen)
            self.records = self.emitter
        carriers: dict[str, LetteringCarrier] = {}
        for name, spec in config.carriers.items():
            carriers[name] = self.over.carriers.get(name) or build_carrier(name, spec, self.environ)
        for name, carrier in self.over.carriers.items():
            carriers.setdefault(name, carrier)
        self.carriers = carriers
        # This instance's heartbeat: its lettering leases are taken over by a peer gateway as soon
        # as it stops beating (killed, stopped), while the phone still rings.
        self.liveness = Liveness(self.store)
        self.outbox = Outbox(
            self.store,
            carriers,
            hash_key=config.number_key(self.environ),
            dedupe_ttl_s=config.dedupe_ttl_s,
            liveness=self.liveness,
        )
        self.sealer = config.sealer(self.environ)
        self.broker = make_broker(redis_url, namespace=self.over.queue_namespace or config.queue_namespace)
        # Its own connection: enqueues get 2 s, not the real-time path's 0.25 s timeouts.
        self.enqueuer = Enqueuer(self.broker, self.sealer, wire=Wire.from_url(redis_url, timeout_s=max(2.0, slow)))
        alimtalk_provider = next(iter(self.over.alimtalk or config.alimtalk), "")
        self.reports = ReportIntake(build_parsers(config.webhooks, self.environ), self.store, self.records)
        sms_provider = reply_provider(config, self.over)
        self.intake = Intake(
            self.redis,
            routing=self.rules.get_routing,
            messaging=self.rules.get_messaging,
            sealer=self.sealer,
            hash_key=self.outbox.hash_key,
            outbox=self.outbox,
            enqueuer=self.enqueuer,
            sms_provider=sms_provider,
            sink=sink,
            wire=self.replicated_wire or self.wire,
            records=self.records,
            office_hours=parse_window(config.records.office_hours),
            ack=self.ack,
        )
        self.inbound = {
            name: InboundProvider(
                name, _secret(self.environ, spec["signature_env"], f"inbound.{name}"), spec["public_url"]
            )
            for name, spec in config.inbound.items()
        }
        self.unsubscribe = {
            name: _unsubscribe_parser(_secret(self.environ, spec["signature_env"], f"unsubscribe.{name}"))
            for name, spec in config.unsubscribe.items()
        }
        # The people behind the staff API and the console (issue #16): accounts, tokens and the
        # access records live in the records store (its engine connects lazily, at first use);
        # console sessions and sign-in throttles in Redis.
        console = config.console or ConsoleConfig()
        self.staff_store = RecordsStore(self.over.records_url or config.records_url(self.environ))
        self.access_log = SqlAccessLog(self.staff_store, audit_key(config.number_key(self.environ)))
        self.sessions = RedisSessions(
            self.redis, idle_s=console.session_idle_minutes * 60.0, max_s=console.session_max_hours * 3600.0
        )
        self.throttle = Throttle(self.redis)
        self.staff_directory = SqlStaffDirectory(
            self.staff_store,
            self.access_log,
            LoginPolicy(max_failures=console.lockout_failures, lock_s=console.lockout_minutes * 60.0),
            self.throttle,
            sessions=self.sessions,
        )
        self.draining = False
        self.http_counts: dict[tuple[str, int], int] = {}
        self.smtp: SmtpIntake | None = None
        if config.smtp:
            self.smtp = SmtpIntake(settings_from_config(config.smtp, config.source), self.intake)
        # A lease outlives the slowest carrier's hard deadline, so it never lapses while its owner
        # is still waiting for the carrier (which would let the other gateway letter the call too).
        lease_s = max((float(getattr(c, "deadline_s", 3.0)) for c in carriers.values()), default=3.0) + 2.0
        latency = lettering_latency()
        self.pipeline = CallPipeline(
            self.rules.get,
            self.outbox,
            sink,
            trunks={p.name: p.trunks for p in config.pbxes},
            messaging=self.rules.get_messaging,
            enqueuer=self.enqueuer,
            alimtalk_provider=alimtalk_provider,
            lease_s=lease_s,
            on_latency=latency.observe,
            records=self.records,
        )
        self.clients = [PbxClient(self._ami_settings(p), self.pipeline, TRACKED_EVENTS) for p in config.pbxes]
        # The collector reads this gateway at scrape time only; the latency histogram comes after it.
        self.registry = new_registry(GatewayCollector(self), latency)
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()

    def _ami_settings(self, pbx: PbxConfig) -> AmiSettings:
        host, port = self.over.pbx_address or (pbx.host, pbx.port)
        settings = AmiSettings(
            name=pbx.name,
            host=host,
            port=port,
            username=pbx.username,
            secret=pbx.secret(self.environ),
            ping_interval_s=pbx.ping_interval_s,
            ping_timeout_s=pbx.ping_timeout_s,
            backoff_max_s=pbx.backoff_max_s,
        )
        return replace(settings, **self.over.ami) if self.over.ami else settings

    async def start(self) -> None:
        """Check Redis, then connect every PBX (each reconnects on its own from now on)."""
        try:
            await self.store.ping()
            await warm_up(self.redis)
            await self.wire.execute("PING")  # connected before the first call needs it
        except (StoreUnavailable, RedisError) as exc:
            log.error("redis not reachable at start (%s); lettering fails closed until it is", exc)
        await self.liveness.beat()  # beating before the first claim names this instance
        self.liveness.start()
        if self.emitter is not None:
            self.emitter.start()
        for client in self.clients:
            self._tasks.append(asyncio.get_running_loop().create_task(client.run(), name=f"ami-{client.name}"))
        self._tasks.append(asyncio.get_running_loop().create_task(self.rules.watch(), name="rules-watch"))

    async def start_smtp(self, port: int | None = None) -> tuple[str, int] | None:
        if self.smtp is None:
            return None
        if port is not None:
            self.smtp = SmtpIntake(replace(self.smtp.settings, port=port), self.intake)
        return await self.smtp.start()

    def begin_drain(self) -> None:
        """Stop taking work: webhooks answer 503, /health 503, SMTP 421 (each sender retries elsewhere/later)."""
        self.draining = True
        if self.smtp is not None:
            self.smtp.handler.draining = True

    async def wait_ready(self, timeout: float) -> bool:
        """True once Redis answers and every PBX is logged in; False when `timeout` passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        redis_ok = False
        while True:
            if not redis_ok:
                try:
                    await self.store.ping()
                    redis_ok = True
                except StoreUnavailable:
                    pass
            if redis_ok and all(c.status()["authenticated"] for c in self.clients):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Graceful stop, bounded by `drain_timeout` in all.

        Order matters: intake refuses first (nothing new is accepted that could be lost), then the
        AMI clients close (no new calls), then in-flight letterings and their enqueues finish, then
        the queue client is flushed and Redis closed. Calls still ringing are not lost: another
        gateway letters them, or this one rebuilds them from CoreShowChannels when it comes back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout

        def left() -> float:
            return max(0.1, deadline - loop.time())

        self.begin_drain()
        if self.smtp is not None:
            await self.smtp.stop(left() / 2)
        for client in self.clients:
            await client.stop()
        await self.pipeline.drain(left())
        try:
            await asyncio.wait_for(self.outbox.flush(), left())
        except TimeoutError:
            log.warning("shutdown: lettering settlements still pending after the drain bound")
        await self.liveness.stop()  # what is still leased (nothing after the drain) is a peer's at once
        if self.pipeline.status()["in_flight"]:
            log.warning(
                "shutdown: %d letterings still in flight after the drain bound", self.pipeline.status()["in_flight"]
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for carrier in self.carriers.values():
            await carrier.close()
        await self.enqueuer.aclose(left())
        if self.emitter is not None:
            # Last: the calls ended by the drain above are recorded; what Redis does not take
            # within the bound is logged as lost.
            await self.emitter.stop(left())
        if self.records_client is not None:
            await self.records_client.aclose()
        await self.staff_store.close()
        await self.redis.aclose()
        await self.wire.aclose()
        if self.replicated_wire is not None:
            await self.replicated_wire.aclose()

    def http_routes(self, app: web.Application, *, metrics: bool = True) -> None:
        """The citizen-facing webhooks, the staff API and (unless `metrics` is False: served on the
        internal listener then) /metrics on the gateway's HTTP listener (`gateway.app.httpapps`)."""
        plan = NumberPlan(
            outside_line_prefixes=self.rules.rules.lettering.outside_line_prefixes,
            extension_pattern=self.rules.rules.lettering.extension_pattern,
        )
        add_gateway_routes(
            app,
            intake=self.intake,
            providers=self.inbound,
            unsubscribe=self.unsubscribe,
            directory=self.staff_directory,
            access=self.access_log,
            throttle=self.throttle,
            plan=plan,
            draining=lambda: self.draining,
            count=self._count_http,
            registry=self.registry if metrics else None,
        )

    def metrics_routes(self, app: web.Application) -> None:
        """GET /metrics (Prometheus), on the internal listener."""
        add_metrics_route(app, self.registry)

    def _count_http(self, route: str, status: int) -> None:
        key = (route, status)
        self.http_counts[key] = self.http_counts.get(key, 0) + 1

    async def health(self) -> dict[str, Any]:
        """Every component's state; `ready` is what /health turns into 200 or 503."""
        redis: dict[str, Any]
        try:
            redis = {"reachable": True, "latency_ms": round(await self.store.ping(), 3)}
        except StoreUnavailable as exc:
            redis = {"reachable": False, "error": str(exc)}
        redis["wire"] = dict(self.wire.events)  # the real-time connection (gateway.infra.wire)
        if redis["reachable"]:
            # Which node is the primary (the one the real-time connection reached: with
            # Sentinel, the one it found at its last connect) and how far its replicas lag.
            try:
                info = redisurl.parse_info(await self.wire.execute("INFO", "replication"))
                redis["replication"] = redisurl.replication_report(info, self.wire.address)
            except RedisError as exc:  # (NOPERM: a user not granted INFO, see ops/redis.conf)
                redis["replication"] = {"primary": self.wire.address, "error": str(exc)}
        pbx = [c.status() for c in self.clients]
        ready = redis["reachable"] and all(p.get("authenticated") for p in pbx)
        queues: dict[str, Any] = {"enqueued": self.enqueuer.enqueued, "enqueue_failed": self.enqueuer.failed}
        # Lettering carriers are called from here (one try while the phone rings: no circuit);
        # Alimtalk/SMS providers from the workers, which publish their circuit state to Redis.
        recent = self.outbox.providers.snapshot()
        providers: dict[str, dict[str, Any]] = {
            "lettering": {
                name: {"circuit": "none", **recent.get(name, {"recent": 0, "recent_errors": 0, "error_rate": 0.0})}
                for name in self.carriers
            },
            "messaging": {},
        }
        if redis["reachable"]:
            try:
                queues["dead_letters"] = await asyncio.to_thread(dead_letter_counts, self.broker)
                # ready, delayed and held-by-a-worker jobs per queue and in total (gateway.messaging.backlog)
                queues["backlog"] = await asyncio.to_thread(backlog_report, self.broker)
                published = await asyncio.to_thread(read_published, self.broker.client, self.broker.namespace)
                providers["messaging"] = published
            except Exception as exc:  # health must answer even when a queue cannot be read
                queues["error"] = str(exc)
        if self.draining:
            ready = False  # a load balancer takes a draining gateway out of rotation
        records = self.records_status()
        if records.get("dropping"):
            ready = False  # facts are being lost: Redis has been away long enough to fill the buffer
        return {
            "ready": ready,
            "draining": self.draining,
            "uptime_s": round(time.time() - self.started_at, 1),
            "pbx": pbx,
            "redis": redis,
            "providers": providers,
            "rules": self.rules.status(),
            "pipeline": self.pipeline.status(),
            "queues": queues,
            "records": records,
        }

    def records_status(self) -> dict[str, int]:
        """The archive's emitter for /health and /metrics: facts pending (buffered, not yet in
        Redis), dropped (the buffer was full), emitted, errors; `dropping` 1 while it is full."""
        if self.emitter is not None:
            st = self.emitter.status()
            return {**st, "dropping": int(self.emitter.pending >= self.emitter.bound)}
        status = getattr(self.records, "status", None)
        return dict(status()) if callable(status) else {}


def reply_provider(config: GatewayConfig, over: Overrides) -> str:
    """The SMS provider replies to citizens go through (staff replies, automatic replies): the
    first configured; "" when there is none."""
    return next(iter(over.sms or config.sms), "")
