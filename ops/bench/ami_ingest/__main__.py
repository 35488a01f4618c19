"""AMI ingest and lettering latency benchmark: ``python -m ops.bench.ami_ingest [--quick]``.

See ops/bench/README.md. Exit code 0 when every run processed exactly what it was sent
(events, calls, letterings), 1 otherwise; timing goals are reported, never enforced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gateway.infra.logs import JsonFormatter
from gateway.rules.lettering import load_rules
from gateway.sim.redisproc import RedisProcess
from ops.bench.ami_ingest.runner import (
    RULES_DIR,
    IngestRun,
    LatencyRun,
    Setup,
    ingest_benchmark,
    latency_run,
    percentile,
)
from ops.bench.ami_ingest.stream import IngestStream, build_ingest_stream

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
GOAL_RATIO = 1.0
GOAL_P99_MS = 10.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.bench.ami_ingest", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller run (about a minute): 50k events, 3 s per rate")
    p.add_argument("--events", type=int, help="events in the ingest stream (default 200000, quick 50000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each ingest variant, interleaved (default 3)")
    p.add_argument(
        "--rates", default="50,200,500", help="new calls per second for the latency runs (default 50,200,500)"
    )
    p.add_argument("--seconds", type=float, help="length of each latency run (default 10, quick 3)")
    p.add_argument(
        "--latency-runs",
        type=int,
        help="runs of the highest rate (the goal's; the others run once); "
        "the run with the median p99 is reported, every run's p99 beside it (default 3, quick 1)",
    )
    p.add_argument("--lead-ms", type=float, default=20.0, help="a call's set-up events precede its DialBegin by this")
    p.add_argument("--hold-ms", type=float, default=200.0, help="the rest of a call follows its DialBegin by this")
    p.add_argument("--timeout", type=float, default=120.0, help="give up on one ingest run after this many seconds")
    p.add_argument(
        "--log-level",
        default="WARNING",
        help="gateway log level; records are formatted as in production and dropped (default WARNING)",
    )
    p.add_argument(
        "--redis-max-connections",
        type=int,
        help="what-if: the gateway's Redis pool size (default: redis-py's, 100, as in production)",
    )
    p.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="what-if: skip the gc.freeze() that `gateway run` does once it is built",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results directory (default {RESULTS_DIR})")
    p.add_argument("--skip-ingest", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-latency", action="store_true", help=argparse.SUPPRESS)
    return p


class CappedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, but only the first `cap` records; the rest are counted (see `suppressed`)."""

    def __init__(self, cap: int) -> None:
        super().__init__(sys.stderr)
        self.cap = cap
        self.shown = 0
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.shown >= self.cap:
            self.suppressed += 1
            return
        self.shown += 1
        super().emit(record)


CONSOLE = CappedHandler(cap=10)


def setup_logging(level: str) -> None:
    """Production's JSON formatter into /dev/null (its cost counts), warnings also on stderr."""
    sink = logging.StreamHandler(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - lives as long as the process
    sink.setFormatter(JsonFormatter())
    console = CONSOLE
    console.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [sink, console]
    root.setLevel(level.upper())
    logging.getLogger("panoramisk").setLevel(logging.CRITICAL)


async def run_all(
    args: argparse.Namespace,
    setup: Setup,
    stream: IngestStream | None,
    *,
    stream_file: Path,
    rates: list[float],
    seconds: float,
) -> tuple[list[IngestRun], list[LatencyRun]]:
    ingest: list[IngestRun] = []
    if stream is not None:
        ingest = await ingest_benchmark(stream, stream_file, setup, args.runs, args.timeout)
    latency: list[LatencyRun] = []
    # The highest rate (the goal's) is run `latency_runs` times, the others once (they are
    # context, and the whole benchmark must stay under 5 minutes): 50, 200, 500, 500, 500.
    top = max(rates, default=0.0)
    plan = [r for r in rates if r != top] + [top] * args.latency_runs if rates else []
    for index, rate in enumerate(plan):
        latency.append(await latency_run(setup, rate, seconds, index=index, hold_ms=args.hold_ms, lead_ms=args.lead_ms))
    return ingest, latency


def ingest_results(stream: IngestStream, runs: list[IngestRun]) -> dict[str, Any]:
    bare = [r for r in runs if r.variant == "bare"]
    pipe = [r for r in runs if r.variant == "pipeline"]
    bare_eps = statistics.median(r.events_per_s for r in bare)
    pipe_eps = statistics.median(r.events_per_s for r in pipe)
    problems: list[str] = []
    for r in bare:
        if r.extra["events_seen"] != stream.events:
            problems.append(f"bare saw {r.extra['events_seen']} events, sent {stream.events}")
    for r in pipe:
        if r.extra["events_seen"] != stream.events:
            problems.append(f"pipeline saw {r.extra['events_seen']} events, sent {stream.events}")
        if r.extra["calls"] != stream.expected_calls:
            problems.append(f"pipeline reported {r.extra['calls']} calls, expected {stream.expected_calls}")
        if r.extra["letterings"] != stream.expected_letterings:
            problems.append(f"pipeline sent {r.extra['letterings']} letterings, expected {stream.expected_letterings}")
        if r.extra["reconnects"]:
            problems.append(f"pipeline's AMI client reconnected {r.extra['reconnects']} times")
    return {
        "runs": [
            {"variant": r.variant, "seconds": round(r.seconds, 4), "events_per_s": round(r.events_per_s), **r.extra}
            for r in runs
        ],
        "bare_events_per_s": round(bare_eps),
        "pipeline_events_per_s": round(pipe_eps),
        "ratio": round(pipe_eps / bare_eps, 3),
        "goal_ratio": GOAL_RATIO,
        "ratio_ok": pipe_eps / bare_eps >= GOAL_RATIO,
        "expected": {"events": stream.events, "calls": stream.expected_calls, "letterings": stream.expected_letterings},
        "counts_ok": not problems,
        "problems": problems,
    }


def latency_results(runs: list[LatencyRun]) -> dict[str, Any]:
    """Per rate, the run with the median p99 (all its figures), each run's p99 beside it, and
    `counts_ok` only when every run of the rate delivered every lettering."""
    each = [_latency_figures(r) for r in runs]
    out: list[dict[str, Any]] = []
    for rate in dict.fromkeys(x["rate"] for x in each):
        of_rate = [x for x in each if x["rate"] == rate]
        ranked = sorted(of_rate, key=lambda x: x["p99_ms"] if x["p99_ms"] is not None else float("inf"))
        median = ranked[(len(ranked) - 1) // 2]
        out.append(
            {
                **median,
                "runs": len(of_rate),
                "p99_runs_ms": [x["p99_ms"] for x in of_rate],
                "counts_ok": all(x["counts_ok"] for x in of_rate),
            }
        )
    return {"rates": out, "counts_ok": all(x["counts_ok"] for x in out)}


def _latency_figures(r: LatencyRun) -> dict[str, Any]:
    lat = r.latencies_ms
    stats: dict[str, float | None] = {
        f"{name}_ms": round(percentile(lat, q), 3) if lat else None
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
    }
    stats["max_ms"] = round(max(lat), 3) if lat else None
    p99 = stats["p99_ms"]
    return {
        "rate": r.rate,
        "calls": r.calls,
        "letterings_received": r.letterings_received,
        **stats,
        "goal_p99_ms": GOAL_P99_MS,
        "p99_ok": p99 is not None and p99 <= GOAL_P99_MS,
        "counts_ok": r.letterings_received == r.calls and r.extra["calls_ended"] == r.calls,
        **r.extra,
    }


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


def markdown(results: dict[str, Any]) -> str:
    lines = ["| figure | value | goal | baseline / ratio |", "|---|---|---|---|"]
    ing = results.get("ingest")
    if ing:
        exp = ing["expected"]
        lines.append(
            f"| ingest, bare panoramisk 1.4 (median of {len(ing['runs']) // 2}) | "
            f"{_fmt(ing['bare_events_per_s'])} events/s | - | baseline |"
        )
        lines.append(
            f"| ingest, full pipeline (median of {len(ing['runs']) // 2}) | "
            f"{_fmt(ing['pipeline_events_per_s'])} events/s | ≥ 1.0 × baseline | "
            f"{ing['ratio']:.2f} × {'(met)' if ing['ratio_ok'] else '(NOT met)'} |"
        )
        lines.append(
            f"| ingest stream | {exp['events']:,} events, {exp['calls']:,} calls, "
            f"{exp['letterings']:,} letterings | counts match | "
            f"{'all runs match' if ing['counts_ok'] else '; '.join(ing['problems'])} |"
        )
    lat = results.get("lettering")
    if lat:
        for r in lat["rates"]:
            figure = f"DialBegin → carrier request @ {r['rate']:g} calls/s (median p99 of {r['runs']})"
            value = (
                f"p50 {_fmt(r['p50_ms'])} / p95 {_fmt(r['p95_ms'])} / p99 {_fmt(r['p99_ms'])} / "
                f"max {_fmt(r['max_ms'])} ms"
            )
            verdict = "(met)" if r["p99_ok"] else "(NOT met)"
            lines.append(
                f"| {figure} | {value} | p99 ≤ {GOAL_P99_MS:g} ms | p99 {verdict}; "
                f"{r['letterings_received']}/{r['calls']} letterings received; p99 of each run "
                f"{', '.join(_fmt(p) for p in r['p99_runs_ms'])} ms |"
            )
    return "\n".join(lines) + "\n"


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows `python -m ops.bench` prints: figure, value, goal, baseline, met."""
    rows: list[dict[str, Any]] = []
    ing = results.get("ingest")
    if ing:
        exp = ing["expected"]
        rows.append(
            {
                "figure": f"AMI ingest, full pipeline (median of {len(ing['runs']) // 2})",
                "value": f"{_fmt(ing['pipeline_events_per_s'])} events/s",
                "goal": f"≥ {GOAL_RATIO:g} × bare",
                "baseline": f"bare panoramisk {_fmt(ing['bare_events_per_s'])} events/s ({ing['ratio']:.2f} ×)",
                "met": ing["ratio_ok"],
            }
        )
        rows.append(
            {
                "figure": "AMI ingest: everything processed",
                "value": f"{exp['events']:,} events, {exp['calls']:,} calls, {exp['letterings']:,} letterings",
                "goal": "counts match",
                "baseline": "domain-code prediction",
                "met": ing["counts_ok"],
                "detail": "; ".join(ing["problems"]),
            }
        )
    lat = results.get("lettering")
    if lat:
        for r in lat["rates"]:
            steady = r["after_first_second_ms"]
            in_gateway = r["ami_receipt_to_adapter_ms"]
            cpu = r["cpu"]
            rows.append(
                {
                    "figure": f"lettering DialBegin → carrier request @ {r['rate']:g} calls/s "
                    f"(run with the median p99 of {r['runs']})",
                    "value": f"p50 {_fmt(r['p50_ms'])} / p99 {_fmt(r['p99_ms'])} / max {_fmt(r['max_ms'])} ms",
                    "goal": f"p99 ≤ {GOAL_P99_MS:g} ms" if r["rate"] >= 500 else f"(p99 ≤ {GOAL_P99_MS:g} ms at 500/s)",
                    "baseline": f"p99 of each run {', '.join(_fmt(p) for p in r['p99_runs_ms'])} ms; "
                    f"{r['letterings_received']}/{r['calls']} received; after 1st s p99 "
                    f"{_fmt(steady['p99'])} ms; in-gateway p99 {_fmt(in_gateway['p99'])} ms; "
                    f"CPU (% of a core): gateway {cpu['gateway_pct']}, helper {cpu['helper_pct']}, "
                    f"redis {cpu['redis_pct']}, other processes {cpu['others_pct']}, "
                    f"taken by the hypervisor {cpu.get('steal_pct')}; "
                    f"gateway {cpu.get('gateway_ms_per_call')} ms CPU/call",
                    "met": (r["p99_ok"] if r["rate"] >= 500 else None) if r["counts_ok"] else False,
                }
            )
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run what `args` asks for and return the results (None for bad arguments, reported)."""
    events = args.events or (50_000 if args.quick else 200_000)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rates = [float(r) for r in args.rates.split(",") if r.strip()] if not args.skip_latency else []
    if args.latency_runs is None:
        args.latency_runs = 1 if args.quick else 3
    if any(r <= 0 for r in rates) or events <= 0 or args.runs <= 0 or seconds <= 0 or args.latency_runs <= 0:
        print("ami_ingest: --events, --runs, --seconds, --latency-runs and --rates must be positive", file=sys.stderr)
        return None
    started = time.time()
    rules = load_rules(RULES_DIR)
    import uvloop

    with RedisProcess() as redis_proc, tempfile.TemporaryDirectory(prefix="ami-bench-") as tmp:
        setup = Setup.make(
            rules,
            redis_proc.url,
            redis_max_connections=args.redis_max_connections,
            gc_freeze=args.gc_freeze,
            redis_pid=redis_proc.proc.pid if redis_proc.proc else None,
        )
        stream: IngestStream | None = None
        stream_file = Path(tmp) / "stream.ami"
        if not args.skip_ingest:
            t0 = time.perf_counter()
            stream = build_ingest_stream(events, rules, pbx=setup.pbx, trunks=setup.trunks)
            stream_file.write_bytes(stream.data)
            print(
                f"stream: {stream.events:,} events, {stream.size / 1e6:.1f} MB, {stream.repetitions} repetitions "
                f"of {len(stream.scenarios)} scenarios, {stream.expected_calls:,} calls, "
                f"{stream.expected_letterings:,} letterings (built in {time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
        ingest, latency = uvloop.run(
            run_all(args, setup, stream, stream_file=stream_file, rates=rates, seconds=seconds)
        )

    results: dict[str, Any] = {
        "meta": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loop": f"uvloop {version('uvloop')}",
            "panoramisk": version("panoramisk"),
            "log_level": args.log_level.upper(),
            "quick": args.quick,
            "what_if": {"redis_max_connections": args.redis_max_connections, "gc_freeze": args.gc_freeze},
            "args": {
                "events": events,
                "runs": args.runs,
                "rates": rates,
                "seconds": seconds,
                "latency_runs": args.latency_runs,
                "lead_ms": args.lead_ms,
                "hold_ms": args.hold_ms,
            },
        },
    }
    if stream is not None:
        results["stream"] = {
            "events": stream.events,
            "bytes": stream.size,
            "repetitions": stream.repetitions,
            "scenarios": list(stream.scenarios),
            "expected_calls": stream.expected_calls,
            "expected_letterings": stream.expected_letterings,
            "expected_external_dials": stream.expected_external_dials,
            "tracked_events": stream.tracked_events,
        }
        results["ingest"] = ingest_results(stream, ingest)
    if latency:
        results["lettering"] = latency_results(latency)
    results["counts_ok"] = all(results[k]["counts_ok"] for k in ("ingest", "lettering") if k in results)
    results["log_records_not_shown"] = CONSOLE.suppressed
    if CONSOLE.suppressed:
        print(f"({CONSOLE.suppressed} more warnings not shown)", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    results = measure(args)
    if results is None:
        return 2
    table = markdown(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started_at"].replace("-", "").replace(":", "")
    for name in (f"ami_ingest-{stamp}", "ami_ingest-latest"):
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (args.out / f"{name}.md").write_text(
            f"# AMI ingest benchmark, {results['meta']['started_at']}\n\n{table}", encoding="utf-8"
        )
    print(f"results: {args.out / f'ami_ingest-{stamp}.json'}", file=sys.stderr)
    return 0 if results["counts_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
