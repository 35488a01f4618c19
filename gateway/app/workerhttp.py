"""`gateway worker`'s own small HTTP listener: /healthz, /health and /metrics.

A worker has no event loop of its own (dramatiq runs threads and one loop for async actors),
so this is the standard library's threading HTTP server on one more thread. It only reads
state; it takes no work, so it needs no draining.

It keeps the gateway's `http:` bounds (`HttpLimits`): a connection must deliver its request
headers within `header_timeout_s` of connecting (requests are HTTP/1.0, one per connection, so
that also bounds an idle connection), and at most `max_connections` are served at once (each
holds a thread); more are answered 503 and closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.app.metrics import records_families, redis_answered, replication_families
from gateway.app.recordsthread import RecordsThread
from gateway.infra import redisurl
from gateway.infra.config import HttpLimits
from gateway.infra.connlimit import ConnectionGate
from gateway.infra.metrics import sends_family
from gateway.messaging.backlog import backlog_report, queue_families
from gateway.messaging.runtime import WorkerRuntime
from gateway.messaging.workers import worker_alive
from gateway.records.metrics import AnswerRateCollector
from gateway.records.metrics import register as register_answer_rates

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 32\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error": "too many connections"}'
)


def holding(worker: dramatiq.Worker | None) -> dict[str, int]:
    """Jobs in this worker's memory that are not running: delayed ones its delay-queue consumers
    fetched and keep until their eta, and ready ones prefetched for its threads."""
    if worker is None:
        return {"delayed": 0, "prefetched": 0}
    delayed = sum(c.delay_queue.qsize() for name, c in list(worker.consumers.items()) if name.endswith(".DQ"))
    return {"delayed": delayed, "prefetched": worker.work_queue.qsize()}


class WorkerCollector(Collector):
    def __init__(
        self,
        runtime: WorkerRuntime,
        broker: RedisBroker,
        worker: dramatiq.Worker | None = None,
        records: RecordsThread | None = None,
    ) -> None:
        self.runtime = runtime
        self.broker = broker
        self.worker = worker
        self.records = records

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        outbox = rt.built_outbox  # built on the actors' loop with the first job; nothing to report before
        if outbox is not None:
            yield sends_family(outbox.providers.totals())
            decisions = CounterMetricFamily(
                "gateway_outbox_decisions",
                "outbox guard decisions and send results (kind:channel:result)",
                labels=["decision"],
            )
            for decision, count in dict(outbox.counts).items():
                decisions.add_metric([decision], count)
            yield decisions
        jobs = CounterMetricFamily("gateway_worker_jobs", "jobs handled by this worker (any outcome)")
        jobs.add_metric([], rt.handled)
        yield jobs
        in_flight = GaugeMetricFamily("gateway_worker_in_flight", "jobs running now")
        in_flight.add_metric([], rt.in_flight)
        yield in_flight
        held = GaugeMetricFamily(
            "gateway_worker_holding",
            "jobs in this worker's memory, not running: delayed (until their time) and prefetched",
            labels=["kind"],
        )
        for kind, count in holding(self.worker).items():
            held.add_metric([kind], count)
        yield held
        circuit = GaugeMetricFamily(
            "gateway_provider_circuit_open",
            "1 while the provider's circuit is open (0.5 half open)",
            labels=["provider"],
        )
        for name, state in rt.provider_report().items():
            circuit.add_metric([name], {"open": 1.0, "half_open": 0.5}.get(state["circuit"], 0.0))
        yield circuit
        queues = queue_families(self.broker)
        yield from queues
        if redis_answered(queues):
            yield from replication_families(self.broker.client)
        if self.records is not None:
            st = self.records.status()
            yield from records_families(st["emitter"], st["writer"])


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, up to `gate.limit` at once; beyond it, 503 and close at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], gate: ConnectionGate) -> None:
        super().__init__(address, handler)
        self.gate = gate
        self._lock = threading.Lock()  # the gate is shared by the accepting thread and the handler threads

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            admitted = self.gate.admit()
        if not admitted:
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client cut off by the deadline or gone mid-answer: not worth socketserver's traceback on stderr.
        log.debug("worker http: connection from %s ended with an error", client_address[0], exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.gate.release()


class WorkerHttp:
    def __init__(
        self,
        broker: RedisBroker,
        runtime: WorkerRuntime,
        worker: dramatiq.Worker,
        host: str,
        port: int,
        *,
        limits: HttpLimits | None = None,
        records: RecordsThread | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(runtime, broker, worker, records))
        self.broker, self.runtime, self.worker = broker, runtime, worker
        self.records = records
        # The answer rates from the records' daily roll-ups (read at scrape, cached, bounded).
        self.answer_rates: AnswerRateCollector | None = (
            register_answer_rates(self.registry, records) if records is not None else None
        )
        self.limits = limits or HttpLimits()
        self.server = _BoundedServer(
            (host, port), self._handler(), ConnectionGate(self.limits.max_connections, "worker http listener")
        )
        self._thread: threading.Thread | None = None

    def health(self) -> dict[str, Any]:
        alive = worker_alive(self.worker)
        queues: dict[str, Any] = {}
        try:
            self.broker.client.ping()
            redis: dict[str, Any] = {"reachable": True}
            queues["backlog"] = backlog_report(self.broker)  # every worker's, read from Redis
        except RedisError as exc:
            redis = {"reachable": False, "error": str(exc)}
        if redis["reachable"]:
            # The primary (with Sentinel: the one the broker's client was last told of) and how far
            # its replicas lag; not part of readiness (NOPERM: a user not granted INFO).
            primary = redisurl.client_address(self.broker.client)
            try:
                info = self.broker.client.info("replication")
                redis["replication"] = redisurl.replication_report(info, primary)
            except RedisError as exc:
                redis["replication"] = {"primary": primary, "error": str(exc)}
        return {
            "ready": alive and redis["reachable"],
            "threads_alive": alive,
            "redis": redis,
            "handled": self.runtime.handled,
            "in_flight": self.runtime.in_flight,
            "holding": holding(self.worker),
            "queues": queues,
            "providers": self.runtime.provider_report(),
            # The SQL archive (not part of readiness: jobs go on, facts wait in the stream).
            **({"records": self.records.status()} if self.records is not None else {}),
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self
        limits = self.limits

        class Handler(BaseHTTPRequestHandler):
            # Each blocking read or write on the socket; the deadline below bounds the whole request.
            timeout = limits.header_timeout_s
            _deadline: threading.Timer | None = None

            def setup(self) -> None:
                super().setup()
                # A socket timeout applies per read: one byte a second would never trip it.
                self._deadline = threading.Timer(limits.header_timeout_s, self._cut)
                self._deadline.daemon = True
                self._deadline.start()

            def _cut(self) -> None:
                # The blocked readline() returns what it has; the request fails to parse and ends.
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def parse_request(self) -> bool:
                ok = super().parse_request()  # reads the headers
                if self._deadline is not None:
                    self._deadline.cancel()
                return ok

            def finish(self) -> None:
                if self._deadline is not None:
                    self._deadline.cancel()
                super().finish()

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200, "application/json", b'{"alive": true}')
                elif self.path == "/health":
                    state = owner.health()
                    body = json.dumps(state, ensure_ascii=False).encode()
                    self._send(200 if state["ready"] else 503, "application/json", body)
                elif self.path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(owner.registry))
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                return

        return Handler

    def start(self) -> tuple[str, int]:
        # A short poll: stop() (shutdown) waits for the loop to notice, within the worker's stop budget.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="worker-http", daemon=True
        )
        self._thread.start()
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.answer_rates is not None:
            self.answer_rates.close()
