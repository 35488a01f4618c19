"""What durable-means-replicated costs: `redis.min_replicas_ack: 1` vs 0 on the same primary + replica.

One primary ``redis-server`` and one real replica of it (``--replicaof``), both private. Each
round runs the real gateway app of `ops.bench.inbound` (`bench_gateway`) twice through the same
concurrency steps with the same load generator: once with ``min_replicas_ack: 0`` (the accept's
Lua step alone) and once with ``1`` (the accept's script and a ``WAIT 1 <timeout>`` written in one
round trip on `Gateway.replicated_wire`). The order alternates from round to round, so neither
mode always runs on the warmer machine; the round with the median throughput ratio is reported.

Counts: Redis is emptied before each run (FLUSHALL, replicated, then WAIT). After a run with
ack 1 every 2xx ``accepted`` answer is looked for on the REPLICA, read right after the load
generator's last answer and before anything else waits for it: acknowledged must mean already
there (lost = accepted answers missing on the replica; must be 0). After a run with ack 0 the
primary is counted (its replica may lag by design).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from gateway.sim.redisproc import RedisProcess
from ops.bench.inbound import PROVIDER, _Collect, _count_stored, _loadgen, _median_by, bench_gateway


class _Pair:
    """A primary and one replica of it, synchronised and acknowledging before use."""

    def __init__(self) -> None:
        # no 5 s wait for more replicas before the first full sync
        self.primary = RedisProcess(extra_args=["--repl-diskless-sync-delay", "0"]).start()
        try:
            self.replica = RedisProcess(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)]).start()
        except BaseException:
            self.primary.cleanup()
            raise

    async def synced(self, client: Any, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await client.set("bench:probe", "1")
            if await client.wait(1, 100) == 1:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the replica did not come online")

    def cleanup(self) -> None:
        self.replica.cleanup()
        self.primary.cleanup()


async def _one(
    pair: _Pair, ack: int, steps: list[int], *, seconds: float, warmup: float, run: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import redis.asyncio as aioredis

    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer

    primary = aioredis.Redis.from_url(pair.primary.url)
    replica = aioredis.Redis.from_url(pair.replica.url)
    try:
        await primary.flushall()
        await pair.synced(primary)  # the replica emptied too before the run
        sink = _Collect()
        gateway = bench_gateway(pair.primary.url, sink, min_replicas_ack=ack)
        spec = gateway.config.inbound[PROVIDER]
        secret = gateway.environ[spec["signature_env"]]
        http = HttpServer(make_app(gateway.health, gateway.reports, gateway.http_routes), "127.0.0.1", 0)
        host, port = await http.start()
        try:
            gc.collect()
            gc.freeze()
            records = await _loadgen(
                f"http://{host}:{port}/webhooks/sms/{PROVIDER}",
                spec["public_url"],
                secret,
                steps,
                seconds=seconds,
                run=run,
                warmup=warmup,
                redis_pid=pair.primary.proc.pid if pair.primary.proc else None,
            )
            # ack 1: on the replica at once (that is what the 2xx promised); ack 0: the primary
            check = await _count_stored(replica if ack else primary, records)
            check["counted_on"] = "replica" if ack else "primary"
            check["min_replicas_ack"] = ack
            check["replicated_wire"] = gateway.replicated_wire is not None  # the WAIT path was taken
            check["ack_timeouts"] = dict(gateway.ack.timeouts)
        finally:
            await http.stop()
            await gateway.stop(drain_timeout=2)
            gc.unfreeze()
    finally:
        await primary.aclose()
        await replica.aclose()
    return [r for r in records if r["event"] == "step"], check


async def _run(steps: list[int], seconds: float, warmup: float, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ack0": [], "ack1": [], "checks": []}
    pair = _Pair()
    try:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(pair.primary.url)
        try:
            await pair.synced(client)
        finally:
            await client.aclose()
        for i in range(rounds):
            for ack in (0, 1) if i % 2 == 0 else (1, 0):
                records, check = await _one(pair, ack, steps, seconds=seconds, warmup=warmup, run=f"ra{ack}r{i}")
                out[f"ack{ack}"].append(records)
                out["checks"].append(check)
    finally:
        pair.cleanup()
    return out


def run(
    *, steps: list[int] | None = None, seconds: float = 3.0, warmup: float = 0.5, rounds: int = 3
) -> dict[str, Any]:
    """Measure (see the module doc); returns the JSON section `replica`."""
    import uvloop

    steps = steps or [8, 32]
    began = time.perf_counter()
    raw = uvloop.run(_run(steps, seconds, warmup, rounds))
    rows = []
    for i, concurrency in enumerate(steps):
        pairs = [
            {
                "ack1": a1[i],
                "ack0": a0[i],
                "ratio": round(a1[i]["ok_per_s"] / a0[i]["ok_per_s"], 3) if a0[i]["ok_per_s"] else 0.0,
            }
            for a1, a0 in zip(raw["ack1"], raw["ack0"], strict=True)
        ]
        median = _median_by(pairs, "ratio")
        rows.append(
            {
                "concurrency": concurrency,
                "ack1": median["ack1"],
                "ack0": median["ack0"],
                "ratio": median["ratio"],
                "rounds": [
                    {
                        "ack1_ok_per_s": p["ack1"]["ok_per_s"],
                        "ack1_p99_ms": p["ack1"]["p99_ms"],
                        "ack0_ok_per_s": p["ack0"]["ok_per_s"],
                        "ack0_p99_ms": p["ack0"]["p99_ms"],
                        "ratio": p["ratio"],
                    }
                    for p in pairs
                ],
            }
        )
    checks = raw["checks"]
    every = [r for runs in raw["ack0"] + raw["ack1"] for r in runs]
    non_2xx = sum(n for r in every for s, n in r["statuses"].items() if not s.startswith("2"))
    errors = sum(sum(r["errors"].values()) for r in every)
    on_replica = [c for c in checks if c["min_replicas_ack"]]
    lost_on_replica = sum(c["lost"] for c in on_replica)
    return {
        "steps": rows,
        "seconds_per_step": seconds,
        "rounds": rounds,
        "checks": checks,
        "accepted_ack1": sum(c["accepted_answers"] for c in on_replica),
        "lost_on_replica": lost_on_replica,
        "lost_on_primary": sum(c["lost"] for c in checks if not c["min_replicas_ack"]),
        "ack_timeouts": sum(sum(c["ack_timeouts"].values()) for c in checks),
        "non_2xx": non_2xx,
        "transport_errors": errors,
        "duration_s": round(time.perf_counter() - began, 1),
        "counts_ok": all(c["lost"] == 0 and c["unexpected_extra"] == 0 and c["accepted_answers"] > 0 for c in checks),
    }


def figures(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in section["steps"]:
        a1, a0 = r["ack1"], r["ack0"]
        ratios = ", ".join(f"{q['ratio']:.2f}" for q in r["rounds"])
        rows.append(
            {
                "figure": f"inbound SMS webhook, min_replicas_ack 1 (1 replica), {r['concurrency']} in flight",
                "value": f"{a1['ok_per_s']:,.0f}/s, p50 {a1['p50_ms']:.1f} / p99 {a1['p99_ms']:.1f} ms "
                f"({r['ratio']:.2f} × ack 0)",
                "goal": "-",
                "baseline": f"min_replicas_ack 0, same primary + replica: {a0['ok_per_s']:,.0f}/s, "
                f"p50 {a0['p50_ms']:.1f} / p99 {a0['p99_ms']:.1f} ms (round with the median ratio of "
                f"{len(r['rounds'])}: {ratios})",
                "met": None,
            }
        )
    rows.append(
        {
            "figure": "inbound SMS with min_replicas_ack 1: accepted answers found on the replica",
            "value": f"{section['lost_on_replica']} lost of {section['accepted_ack1']:,} "
            f"({section['ack_timeouts']} ack timeouts, {section['non_2xx']} non-2xx answers, "
            f"{section['transport_errors']} transport errors)",
            "goal": "0 lost",
            "baseline": f"ack 0: {section['lost_on_primary']} lost on the primary",
            "met": section["lost_on_replica"] == 0 and section["counts_ok"],
        }
    )
    return rows
