"""The measured side: bare panoramisk and the real `Gateway`, against the helper's servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adapters.carrier_http import PROFILES, HttpCarrier
from gateway.app.gateway import Gateway, Overrides
from gateway.app.replay import demo_environ, sandbox_carriers
from gateway.domain.rules import Rules
from gateway.infra.config import GatewayConfig, load_config
from gateway.ports import LetteringCarrier, RecordSink
from ops.bench.ami_ingest.server import TOKEN_ENV
from ops.bench.ami_ingest.stream import IngestStream
from ops.bench.cpu import CpuWindow

ROOT = Path(__file__).resolve().parents[3]
RULES_DIR = ROOT / "rules"


class BenchError(RuntimeError):
    """A run did not complete or did not see what it should have."""


class GcMonitor:
    """Counts this process's garbage collections per generation and their longest pause."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.max_pause_ms = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        self.collections[gen] += 1
        self.max_pause_ms[gen] = max(self.max_pause_ms[gen], (time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> GcMonitor:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        return {"collections": self.collections, "max_pause_ms": [round(x, 2) for x in self.max_pause_ms]}


# ------------------------------------------------------------------------------ the helper process


class Helper:
    """The helper process (`ops.bench.ami_ingest.server`) and its JSON-lines channel."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str] | None = None, max_seconds: float = 600.0) -> Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ops.bench.ami_ingest.server",
            "--max-seconds",
            str(max_seconds),
            *args,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,
        )
        return cls(proc)

    async def next(self, event: str, timeout: float) -> dict[str, Any]:
        """The next record of kind `event` (others are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"helper: no {event!r} within {timeout:.0f} s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                raise BenchError(f"helper: no {event!r} within {timeout:.0f} s") from None
            if not line:
                raise BenchError(f"helper exited (code {await self.proc.wait()}) before {event!r}")
            record: dict[str, Any] = json.loads(line)
            if record.get("event") == event:
                return record

    async def report(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ask for the final report (the helper then exits)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"report\n")
        await self.proc.stdin.drain()
        return await self.next("report", timeout)

    async def close(self) -> None:
        """Let the helper end (stdin closed); kill it if it does not within 10 s."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------------------ gateway wiring


class CountingSink:
    """A `DecisionSink` that counts decisions and stamps the moment the N-th call ended."""

    def __init__(self, expected_calls: int) -> None:
        self.expected_calls = expected_calls
        self.kinds: Counter[str] = Counter()
        self.lettering_results: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.all_calls_ended: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def decision(self, record: Mapping[str, Any]) -> None:
        kind = str(record.get("event"))
        self.kinds[kind] += 1
        if kind == "call":
            if self.kinds["call"] == self.expected_calls and not self.all_calls_ended.done():
                self.all_calls_ended.set_result(time.perf_counter())
        elif kind == "lettering":
            self.lettering_results[str(record.get("result"))] += 1
        elif kind == "skipped":
            self.skipped[str(record.get("reason"))] += 1


@dataclass
class Setup:
    """What every Gateway of the benchmark shares."""

    config: GatewayConfig
    environ: dict[str, str]
    rules: Rules
    redis_url: str
    gateway_url: str  # what the Gateway gets (what-if: with a larger pool)
    gc_freeze: bool  # gc.freeze() once the Gateway is built, as `gateway run` does
    redis_pid: int | None = None  # for CPU accounting

    @classmethod
    def make(
        cls,
        rules: Rules,
        redis_url: str,
        *,
        redis_max_connections: int | None = None,
        gc_freeze: bool = True,
        redis_pid: int | None = None,
    ) -> Setup:
        config = load_config(None)
        config = replace(config, pbxes=config.pbxes[:1])
        gateway_url = (
            redis_url if redis_max_connections is None else (f"{redis_url}?max_connections={redis_max_connections}")
        )
        return cls(config, demo_environ(config, os.environ), rules, redis_url, gateway_url, gc_freeze, redis_pid)

    @property
    def pbx(self) -> str:
        return self.config.pbxes[0].name

    @property
    def trunks(self) -> tuple[str, ...]:
        return tuple(self.config.pbxes[0].trunks)

    def gateway(
        self,
        sink: CountingSink,
        port: int,
        carriers: dict[str, LetteringCarrier],
        records: RecordSink | None = None,
    ) -> Gateway:
        gateway = Gateway(
            self.config,
            sink,
            environ=self.environ,
            overrides=Overrides(
                redis_url=self.gateway_url,
                rules_dir=RULES_DIR,
                pbx_address=("127.0.0.1", port),
                carriers=carriers,
                records=records,
            ),
        )
        gc.collect()
        if self.gc_freeze:
            gc.freeze()
        return gateway

    async def flush_redis(self) -> None:
        """A clean Redis, so a repeated stream is not answered "duplicate"."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()


# ------------------------------------------------------------------------------ ingest throughput


@dataclass
class IngestRun:
    variant: str  # "bare" or "pipeline"
    seconds: float  # first stream byte written -> last event processed
    events: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def run_bare(helper: Helper, port: int, stream: IngestStream, timeout: float) -> IngestRun:
    """panoramisk 1.4's own `Manager`, a no-op callback for every event."""
    from panoramisk import Manager

    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    target = stream.events + 1  # + the FullyBooted that follows the login answer
    count = 0

    def on_event(manager: Any, _message: Any) -> None:
        nonlocal count
        count += 1
        if count == target:
            done.set_result(time.perf_counter())
            manager.close()  # before the server's close is read: no reconnect is scheduled

    def on_disconnect(_manager: Any, _exc: Any) -> None:
        if not done.done():
            done.set_exception(BenchError(f"bare: connection lost after {count} of {target} events"))

    # A long reconnect timeout: panoramisk reconnects by itself when the peer closes first
    # (it only happens on failure, which ends the run anyway).
    manager = Manager(
        host="127.0.0.1",
        port=port,
        username="bench",
        secret="bench",
        loop=loop,
        encoding="utf8",
        ping_delay=10,
        ping_interval=10,
        reconnect_timeout=86_400,
        on_disconnect=on_disconnect,
    )
    manager.register_event("*", on_event)
    manager.connect()
    try:
        end = await asyncio.wait_for(done, timeout)
    finally:
        manager.close()
    served = await helper.next("served", 30)
    if served.get("kind") != "bare" or "error" in served:
        raise BenchError(f"bare: unexpected server record {served}")
    if count != target:
        raise BenchError(f"bare: saw {count} events, expected {target}")
    return IngestRun(
        "bare",
        end - float(served["first_byte"]),
        stream.events,
        {"events_seen": count - 1, "server_write_s": served["last_write"] - served["first_byte"]},
    )


async def run_pipeline(helper: Helper, port: int, stream: IngestStream, setup: Setup, timeout: float) -> IngestRun:
    """The real Gateway (sandbox carrier, Redis, rules/) on the same stream."""
    await setup.flush_redis()
    sink = CountingSink(stream.expected_calls)
    gateway = setup.gateway(sink, port, sandbox_carriers(setup.config, {}))
    with GcMonitor() as gc_monitor:
        await gateway.start()
        try:
            try:
                end = await asyncio.wait_for(asyncio.shield(sink.all_calls_ended), timeout)
            except TimeoutError:
                raise BenchError(
                    f"pipeline: {sink.kinds['call']} of {stream.expected_calls} calls ended within {timeout:.0f} s"
                ) from None
            await gateway.pipeline.drain(30)
            drained = time.perf_counter()
            status = gateway.clients[0].status()
            outbox = dict(gateway.outbox.counts)
        finally:
            await gateway.stop()
    served = await helper.next("served", 30)
    if served.get("kind") != "pipeline" or "error" in served:
        raise BenchError(f"pipeline: unexpected server record {served}")
    first = float(served["first_byte"])
    seen = int(status["events_dispatched"]) + sum(status["events_discarded_by_name"].values()) - 1  # - FullyBooted
    extra = {
        "events_seen": seen,
        "events_parsed": int(status["events_dispatched"]) - 1,
        "calls": sink.kinds["call"],
        "letterings": sum(sink.lettering_results.values()),
        "lettering_results": dict(sink.lettering_results),
        "skipped": dict(sink.skipped),
        "outbox": outbox,
        "reconnects": status["reconnects"],
        "seconds_incl_lettering": drained - first,
        "server_write_s": served["last_write"] - first,
        "gc": gc_monitor.summary(),
    }
    return IngestRun("pipeline", end - first, stream.events, extra)


async def ingest_benchmark(
    stream: IngestStream, stream_file: Path, setup: Setup, runs: int, timeout: float
) -> list[IngestRun]:
    """`runs` x (bare, pipeline), interleaved, against one helper serving the same stream."""
    helper = await Helper.start("ingest", "--stream", str(stream_file), max_seconds=timeout * runs * 2 + 60)
    try:
        ready = await helper.next("ready", 60)
        out: list[IngestRun] = []
        for _ in range(runs):
            gc.collect()
            out.append(await run_bare(helper, int(ready["bare_port"]), stream, timeout))
            gc.collect()
            out.append(await run_pipeline(helper, int(ready["gateway_port"]), stream, setup, timeout))
        return out
    finally:
        await helper.close()


# ------------------------------------------------------------------------------ lettering latency


@dataclass
class LatencyRun:
    rate: float
    calls: int
    letterings_received: int  # valid carrier requests matched to a call
    latencies_ms: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


# The records benchmark's switch (`ops.bench.records_latency`): entered around the gateway's
# run (after it is built, before it starts; left after it stopped), its dict is the run's
# extra["records"].
RecordsHook = Callable[[Gateway], AbstractAsyncContextManager[dict[str, Any]]]


async def latency_run(
    setup: Setup,
    rate: float,
    seconds: float,
    *,
    index: int,
    hold_ms: float,
    lead_ms: float,
    records: RecordSink | None = None,
    records_hook: RecordsHook | None = None,
) -> LatencyRun:
    """One run at `rate`; `records` replaces the gateway's own `RecordSink` (a StreamRecordSink
    to Redis) when given (e.g. `NoRecords()`: records off)."""
    token = secrets.token_urlsafe(24)
    helper = await Helper.start(
        "lettering",
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--hold-ms",
        str(hold_ms),
        "--lead-ms",
        str(lead_ms),
        "--id-base",
        str((index + 1) * 10**12),
        "--number-base",
        str((index + 1) * 10**7),
        env={TOKEN_ENV: token},
        max_seconds=seconds + 120,
    )
    try:
        ready = await helper.next("ready", 120)
        calls = int(ready["calls"])
        await setup.flush_redis()
        carrier = HttpCarrier("skt", PROFILES["skt"], str(ready["carrier_url"]), token)
        providers = {route.provider for route in setup.rules.lettering.providers}
        carriers: dict[str, LetteringCarrier] = {name: carrier for name in providers}
        sink = CountingSink(calls)
        gateway = setup.gateway(sink, int(ready["ami_port"]), carriers, records)
        pids = {"gateway": os.getpid(), "helper": helper.proc.pid, "redis": setup.redis_pid}
        hook = records_hook(gateway) if records_hook is not None else contextlib.nullcontext({})
        with GcMonitor() as gc_monitor:
            async with hook as records_info:
                await gateway.start()
                try:
                    with CpuWindow(pids) as cpu:
                        played = await helper.next("played", seconds + 60)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(sink.all_calls_ended), 30)
                    await gateway.pipeline.drain(10)
                    in_gateway = list(gateway.pipeline.dial_latencies_ms)
                    outbox = dict(gateway.outbox.counts)
                finally:
                    await gateway.stop()
        report = await helper.report()
    finally:
        await helper.close()
    dial_at = {str(c["number"]): c["dial_at"] for c in report["calls"]}
    order = {str(c["number"]): k for k, c in enumerate(report["calls"])}
    warm_from = int(rate)  # calls of the first second: connection pools still filling
    latencies: list[float] = []
    steady: list[float] = []
    invalid = unmatched = 0
    seen: set[str] = set()
    for req in report["requests"]:
        if req["error"]:
            invalid += 1
            continue
        sent = dial_at.get(str(req["recipient"]))
        if sent is None or req["recipient"] in seen:
            unmatched += 1
            continue
        seen.add(str(req["recipient"]))
        latencies.append((float(req["received_at"]) - float(sent)) * 1000)
        if order[str(req["recipient"])] >= warm_from:
            steady.append(latencies[-1])
    cpu_use = cpu.summary()
    if cpu_use.get("gateway_pct") is not None and calls:
        # What one call costs the gateway's core: 1000 / this = calls/s one idle core could take.
        cpu_use["gateway_ms_per_call"] = round(cpu_use["gateway_pct"] / 100 * cpu_use["wall_s"] / calls * 1000, 3)
    extra = {
        "calls_ended": sink.kinds["call"],
        "lettering_results": dict(sink.lettering_results),
        "skipped": dict(sink.skipped),
        "outbox": outbox,
        "carrier_requests": len(report["requests"]),
        "invalid_requests": invalid,
        "unmatched_requests": unmatched,
        "server": {k: v for k, v in played.items() if k != "event"},
        "after_first_second_ms": summary(steady),
        "ami_receipt_to_adapter_ms": summary(in_gateway),
        "gc": gc_monitor.summary(),
        "cpu": cpu_use,
    }
    if records_hook is not None:
        extra["records"] = records_info
    return LatencyRun(rate, calls, len(latencies), latencies, extra)


# ------------------------------------------------------------------------------ statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
    }
