"""Instruction counts of hot-path steps, under valgrind's callgrind: ``python -m ops.bench.instructions``.

Timings on a shared 2-core machine move by tens of percent from one run to the next; the number
of instructions a step executes does not (same code, same inputs: the same count, whatever else
the machine is doing). This tool counts them for what the other sections time:

* ``accept``: one citizen's message accepted by `Intake.accept` (routing, sealing, its notification
  job and its auto-reply admitted through the guard, the one Lua step's round trip to a private
  `redis-server`; what a webhook costs beyond parsing it);
* ``hmac`` against ``hmac_stdlib``: `gateway.infra.crypto.hmac_sha256_hex` against
  ``hmac.new(key, message, hashlib.sha256).hexdigest()`` (the baseline, same key and message);
* ``job_id`` against ``uuid4``: `gateway.messaging.jobs._job_id` against ``str(uuid.uuid4())``.

Each figure is the difference between two runs of the same program doing the step N₁ and N₂
times, divided by N₂ − N₁: start-up and imports cancel out. The gateway's Redis command timeouts
are lengthened for the runs (`Overrides.redis_timeout_s`): under valgrind it runs ~50 times
slower. It needs `valgrind` (Debian's package) and `redis-server` on the PATH, and takes about three
minutes; it is not part of `python -m ops.bench` (whose budget is 5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.domain.routing import InboundSms

ROOT = Path(__file__).resolve().parents[2]
STEPS = {
    "accept": (320, 1600),
    "hmac": (0, 10_000),
    "hmac_stdlib": (0, 10_000),
    "job_id": (0, 10_000),
    "uuid4": (0, 10_000),
    "route": (0, 1000),
    "notify_job": (0, 1000),
    "reply": (0, 1000),
}
PAIRS = [("accept", None), ("hmac", "hmac_stdlib"), ("job_id", "uuid4")]
# With --parts: pieces of `accept`, each run alone on the same gateway set-up (what share of an
# accept they are): the routing decision, the queue notification's job (with the reply it asks
# the worker for); and, for comparison, what the worker then builds for the automatic reply (its
# SMS job and thread entry), which is no longer part of the accept.
PARTS = [("route", None), ("notify_job", None), ("reply", None)]


def count(step: str, n: int, redis_url: str) -> int:
    """Instructions of one run of this program doing `step` `n` times, under callgrind."""
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "ops.bench.instructions",
            "--child",
            step,
            "--n",
            str(n),
            "--redis-url",
            redis_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None or "child ok" not in proc.stdout:
        raise RuntimeError(f"{step} x {n} failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    return int(found.group(1).replace(",", ""))


def per_step(step: str, redis_url: str, flush: Any) -> float:
    low, high = STEPS[step]
    counts = []
    for n in (low, high):
        flush()
        counts.append(count(step, n, redis_url))
    return (counts[1] - counts[0]) / (high - low)


# ------------------------------------------------------------------ the measured programs


def _child(step: str, n: int, redis_url: str) -> None:
    if step in ("accept", "route", "notify_job", "reply"):
        import uvloop

        uvloop.run(_accepts(n, redis_url, step))
    else:
        fn = _micro(step)
        for _ in range(n):
            fn()
    print("child ok")


def _micro(step: str) -> Any:
    import hashlib
    import hmac
    import uuid

    from gateway.infra.crypto import hmac_sha256_hex
    from gateway.messaging.jobs import _job_id

    key, message = b"k" * 32, b"+821012345678"
    return {
        "hmac": lambda: hmac_sha256_hex(key, message),
        "hmac_stdlib": lambda: hmac.new(key, message, hashlib.sha256).hexdigest(),
        "job_id": _job_id,
        "uuid4": lambda: str(uuid.uuid4()),
    }[step]


async def _accepts(n: int, redis_url: str, step: str = "accept") -> None:
    import gc
    from dataclasses import replace

    from gateway.domain.numbers import NumberPlan
    from gateway.domain.routing import route
    from gateway.inbox.intake import inbound_from_fields
    from ops.bench.inbound import PROVIDER, _Collect, bench_gateway

    gateway = bench_gateway(redis_url, _Collect(), redis_timeout_s=60.0)
    gc.collect()
    gc.freeze()  # as `gateway run` does
    first = inbound_from_fields(
        {
            "message_id": "m",
            "from": "01012345678",
            "to": "031-900-2000",
            "text": "층간 소음이 너무 심해요",
            "received_at": "1763900000",
        },
        PROVIDER,
        NumberPlan(),
        time.time(),
    )
    # 64 in flight at a time, each from a citizen of its own (no thread, no duplicate)
    messages = [replace(first, message_id=f"m{k}", sender=f"+82102{k:07d}") for k in range(n)]
    intake = gateway.intake
    routing, tid = intake._routing(), "t0123456789abcdef0123"
    sealed = "k1.xxxxxxxxxxxxxxxx.yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"  # (the shape of a sealed value)
    if routing is None:
        raise RuntimeError("the bench gateway loaded no routing rules")
    parts: dict[str, Callable[[InboundSms], object]] = {
        "route": lambda m: route(m, routing, None),
        "notify_job": lambda m: intake._notification(
            m,
            tid,
            sealed,
            queue="complaint",
            rule="r",
            priority="normal",
            reply=("민원이 접수되었습니다.", f"auto_reply:{m.message_id}", sealed),
        ),
        "reply": lambda m: intake.replies.outgoing(
            tid, m.sender, m.to, "민원이 접수되었습니다.", f"auto_reply:{m.message_id}", rule_text=True
        ),
    }
    try:
        if step in parts:
            part = parts[step]
            for m in messages:
                part(m)
            return
        for k in range(0, n, 64):
            results = await asyncio.gather(*(gateway.intake.accept(m) for m in messages[k : k + 64]))
            if any(r.status != "accepted" for r in results):
                raise RuntimeError(f"not accepted: {[r.status for r in results]}")
    finally:
        await gateway.stop(drain_timeout=2)


# ------------------------------------------------------------------ entry point


def measure(*, parts: bool = False) -> dict[str, Any]:
    from gateway.sim.redisproc import RedisProcess

    began = time.perf_counter()
    out: dict[str, Any] = {"figures": {}}
    with RedisProcess() as redis_proc:
        import redis

        client = redis.Redis.from_url(redis_proc.url)

        def flush() -> None:
            client.flushall()

        for step, baseline in PAIRS + (PARTS if parts else []):
            value = per_step(step, redis_proc.url, flush)
            row: dict[str, Any] = {"instructions": round(value)}
            if baseline is not None:
                base = per_step(baseline, redis_proc.url, flush)
                row.update(
                    {
                        "baseline": baseline,
                        "baseline_instructions": round(base),
                        "ratio": round(value / base, 3) if base else None,
                    }
                )
            out["figures"][step] = row
        client.close()
    out["duration_s"] = round(time.perf_counter() - began, 1)
    return out


def table(result: dict[str, Any]) -> str:
    lines = ["| step | instructions per step | baseline (same run) |", "|---|---|---|"]
    for step, row in result["figures"].items():
        base = (
            f"{row['baseline']}: {row['baseline_instructions']:,} ({row['ratio']:.2f} ×)"
            if row.get("baseline")
            else "-"
        )
        lines.append(f"| {step} | {row['instructions']:,} | {base} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench.instructions", description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--parts",
        action="store_true",
        help="also count pieces of an accept alone (routing, notification job, auto-reply): +3 minutes",
    )
    p.add_argument("--out", type=Path, default=ROOT / "ops" / "bench" / "results")
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.n, args.redis_url)
        return 0
    missing = [tool for tool in ("valgrind", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(
            f"ops.bench.instructions: {', '.join(missing)} not found (Debian: apt-get install {' '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    result = measure(parts=args.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"instructions-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (args.out / f"instructions-{stamp}.md").write_text(text + "\n")
    print(text)
    print(f"\n({result['duration_s']} s; results in {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
