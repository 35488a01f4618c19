"""`GET /metrics` (Prometheus): the registry and the metric families shared by every process.

One registry per `Gateway` or worker listener (not prometheus-client's global one), so several
gateways in one process (tests, the demo) never share or clash. Most figures are collected on
scrape from the state the components keep anyway: the gateway's collector is
`gateway.app.metrics`, the worker's `gateway.app.workerhttp`, the queues' families
`gateway.messaging.backlog`; only the lettering latency is a histogram observed as it happens.
Names follow Prometheus's conventions (base units, `_total` on counters: CounterMetricFamily
adds it); `promtool check metrics` runs on real scrapes in tests/system/test_promtool.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Seconds (Prometheus's base unit): 0.5 ms to 2.5 s, dense where the lettering budget is.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def sends_family(totals: dict[tuple[str, str, str], int]) -> CounterMetricFamily:
    """Provider answers by channel (lettering, alimtalk, sms, lms), provider and result."""
    sends = CounterMetricFamily(
        "gateway_sends",
        "requests answered by a provider, by channel, provider and result",
        labels=["channel", "provider", "result"],
    )
    for (channel, provider, result), count in totals.items():
        sends.add_metric([channel, provider, result], count)
    return sends


def lettering_latency() -> Histogram:
    """The lettering latency histogram, not yet in a registry: the call pipeline is built with
    its `observe` before the registry that exposes it (`new_registry`)."""
    return Histogram(
        "gateway_lettering_latency_seconds",
        "AMI DialBegin receipt to the carrier request",
        buckets=LATENCY_BUCKETS_S,
        registry=None,
    )


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own holding `collectors`, exposed in that order."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The scrape body. Reads Redis synchronously: call it off the event loop."""
    output: bytes = generate_latest(registry)
    return output
