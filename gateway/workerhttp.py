"""`gateway worker`'s own small HTTP listener: /healthz, /health and /metrics.

A worker has no event loop of its own (dramatiq runs threads and one loop for async actors),
so this is the standard library's threading HTTP server on one more thread. It only reads
state; it takes no work, so it needs no draining.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.metrics import queue_families, sends_family


class WorkerCollector(Collector):
    def __init__(self, runtime: Any, broker: Any) -> None:
        self.runtime = runtime
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        outbox = rt._outbox  # built on the actors' loop with the first job; nothing to report before
        if outbox is not None:
            yield sends_family(outbox.providers.totals())
            decisions = CounterMetricFamily("gateway_outbox_decisions", "outbox guard decisions and send results "
                                            "(kind:channel:result)", labels=["decision"])
            for decision, count in dict(outbox.counts).items():
                decisions.add_metric([decision], count)
            yield decisions
        jobs = CounterMetricFamily("gateway_worker_jobs", "jobs handled by this worker (any outcome)")
        jobs.add_metric([], rt.handled)
        yield jobs
        in_flight = GaugeMetricFamily("gateway_worker_in_flight", "jobs running now")
        in_flight.add_metric([], rt.in_flight)
        yield in_flight
        circuit = GaugeMetricFamily("gateway_provider_circuit_open", "1 while the provider's circuit is open "
                                    "(0.5 half open)", labels=["provider"])
        for name, state in rt.provider_report().items():
            circuit.add_metric([name], {"open": 1.0, "half_open": 0.5}.get(state["circuit"], 0.0))
        yield circuit
        yield from queue_families(self.broker)


class WorkerHttp:
    def __init__(self, broker: Any, runtime: Any, worker: Any, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(runtime, broker))
        self.broker, self.runtime, self.worker = broker, runtime, worker
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def health(self) -> dict[str, Any]:
        from gateway.worker import worker_alive

        alive = worker_alive(self.worker)
        try:
            self.broker.client.ping()
            redis: dict[str, Any] = {"reachable": True}
        except RedisError as exc:
            redis = {"reachable": False, "error": str(exc)}
        return {"ready": alive and redis["reachable"], "threads_alive": alive, "redis": redis,
                "handled": self.runtime.handled, "in_flight": self.runtime.in_flight,
                "providers": self.runtime.provider_report()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
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
        self._thread = threading.Thread(target=self.server.serve_forever, name="worker-http", daemon=True)
        self._thread.start()
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
