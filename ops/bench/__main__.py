"""Every benchmark of the gateway: ``python -m ops.bench [--quick] [--only SECTIONS]``.

Sections (see ops/bench/README.md for what each figure means):

* ``ami``: AMI ingest (full pipeline vs bare panoramisk) and lettering latency at 50/200/500 calls/s
  (`ops.bench.ami_ingest`);
* ``inbound``: signed SMS webhooks/s and latency at rising concurrency, real gateway app vs a bare
  aiohttp handler, then every accepted message looked for in Redis (`ops.bench.inbound`);
* ``routing``: `route()` decisions/s with 500 generated rules vs a naive scan (`ops.bench.routing`);
* ``memory``: bytes per tracked call with 10,000 concurrent calls (`ops.bench.memory`);
* ``records``: the SQL archive over a generated year (15 million calls) on SQLite and PostgreSQL:
  the answer-rate report, write throughput, a day's purge, intake during it, and the lettering
  p99 with records on vs off (`ops.bench.records`). Not in the default run (a full year takes
  minutes to generate the first time): ask for it with ``--only records``;
* ``console``: the staff console's inbox page with 10,000 open threads, a new message reaching 50
  connected pages, and webhook intake with 50 console sessions open vs without (`ops.bench.console`).
  Not in the default run either (about a minute and a half more than its 5 minutes): ``--only console``;
* ``replica``: signed SMS webhooks/s and p50/p99 with ``redis.min_replicas_ack: 1`` vs 0 on the same
  primary + replica, then every message accepted with ack 1 looked for on the replica
  (`ops.bench.replica_ack`). Not in the default run (about a minute): ``--only replica``.

Prints one table (every figure beside its goal and its baseline) and writes it, with all the
raw data as JSON, to ``ops/bench/results/bench-<UTC stamp>.{json,md}`` and ``bench-latest.{json,md}``.
Exit status 0 when every run processed exactly what it was sent (counts, stored messages, same
routing decisions as the reference), 1 otherwise, 2 for bad arguments. Timing goals are
reported, never enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = ("ami", "routing", "memory", "inbound", "console", "records", "replica")
DEFAULT_SECTIONS = ("ami", "routing", "memory", "inbound")  # the 5-minute run; console and records when asked


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about a minute: smaller runs of every section")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"sections to run, comma-separated ({', '.join(SECTIONS)}; default {','.join(DEFAULT_SECTIONS)})",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results directory (default {RESULTS_DIR})")
    sizes = p.add_argument_group("sizes (defaults depend on --quick)")
    sizes.add_argument("--ami-events", type=int, help="AMI ingest stream size (200000, quick 50000)")
    sizes.add_argument("--ami-runs", type=int, help="runs of each ingest variant (3, quick 1)")
    sizes.add_argument("--rates", default="50,200,500", help="lettering latency rates, calls/s (50,200,500)")
    sizes.add_argument("--latency-seconds", type=float, help="length of each latency run (10, quick 3)")
    sizes.add_argument("--latency-runs", type=int, help="runs of the top lettering rate, median p99 (3, quick 1)")
    sizes.add_argument("--inbound-steps", help="webhook concurrency steps (1,8,32,64, quick 8,32)")
    sizes.add_argument("--inbound-seconds", type=float, help="length of each webhook step (3, quick 2)")
    sizes.add_argument(
        "--inbound-rounds",
        type=int,
        help="rounds of bare then gateway through every step; the median ratio is reported (3, quick 1)",
    )
    sizes.add_argument("--inbound-warmup", type=float, help="unmeasured webhook requests first, seconds (1, quick 0.5)")
    sizes.add_argument("--routing-seconds", type=float, help="length of each routing figure (3, quick 1)")
    sizes.add_argument("--routing-sample", type=int, help="distinct routed messages per mix (5000, quick 2000)")
    sizes.add_argument("--memory-calls", type=int, help="concurrent calls for the memory figure (10000, quick 2000)")
    sizes.add_argument("--console-threads", type=int, help="open threads in the console's measured queue (10000)")
    sizes.add_argument("--console-requests", type=int, help="console page requests per page and person (100, quick 30)")
    sizes.add_argument("--console-clients", type=int, help="connected console pages (50)")
    sizes.add_argument("--console-messages", type=int, help="messages watched reaching the pages (20, quick 5)")
    sizes.add_argument(
        "--console-rounds", type=int, help="interleaved rounds of intake with/without pages (3, quick 1)"
    )
    sizes.add_argument("--replica-steps", help="webhook concurrency steps with/without replica acks (8,32, quick 32)")
    sizes.add_argument(
        "--replica-rounds", type=int, help="interleaved rounds of ack 0 / ack 1; median ratio reported (3, quick 1)"
    )
    sizes.add_argument("--records-calls", type=int, help="calls in the records year (15000000, quick 300000)")
    sizes.add_argument("--records-db", default="sqlite,postgresql", help="records databases (sqlite,postgresql)")
    return p


def _pick(value: Any, full: Any, quick: Any, is_quick: bool) -> Any:
    return value if value is not None else (quick if is_quick else full)


def run_ami(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench.ami_ingest.__main__ import figures, measure
    from ops.bench.ami_ingest.__main__ import parser as ami_parser

    argv = [
        "--events",
        str(_pick(args.ami_events, 200_000, 50_000, args.quick)),
        "--runs",
        str(_pick(args.ami_runs, 3, 1, args.quick)),
        "--rates",
        args.rates,
        "--seconds",
        str(_pick(args.latency_seconds, 10.0, 3.0, args.quick)),
        "--latency-runs",
        str(_pick(args.latency_runs, 3, 1, args.quick)),
    ]
    results = measure(ami_parser().parse_args(argv))
    if results is None:
        raise ValueError("bad AMI benchmark arguments")
    return results, figures(results)


def run_routing(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench import routing

    section = routing.run(
        seconds=_pick(args.routing_seconds, 3.0, 1.0, args.quick),
        sample_size=_pick(args.routing_sample, 5000, 2000, args.quick),
    )
    return section, routing.figures(section)


def run_memory(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # A fresh interpreter: what earlier sections left behind (interned strings, caches, the
    # allocator's state) changed the figure by 10 % when measured in the same process.
    import multiprocessing

    from ops.bench import memory

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        section = pool.apply(memory.run, kwds={"calls": _pick(args.memory_calls, 10_000, 2_000, args.quick)})
    return section, memory.figures(section)


def run_inbound(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench import inbound

    steps = _pick(args.inbound_steps, "1,8,32,64", "8,32", args.quick)
    section = inbound.run(
        steps=[int(s) for s in steps.split(",") if s.strip()],
        seconds=_pick(args.inbound_seconds, 3.0, 2.0, args.quick),
        rounds=_pick(args.inbound_rounds, 3, 1, args.quick),
        warmup=_pick(args.inbound_warmup, 1.0, 0.5, args.quick),
    )
    return section, inbound.figures(section)


def run_console(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench import console

    section = console.run(
        threads=_pick(args.console_threads, 10_000, 10_000, args.quick),
        requests=_pick(args.console_requests, 100, 30, args.quick),
        clients=_pick(args.console_clients, 50, 50, args.quick),
        messages=_pick(args.console_messages, 20, 5, args.quick),
        seconds=_pick(args.inbound_seconds, 3.0, 2.0, args.quick),
        rounds=_pick(args.console_rounds, 3, 1, args.quick),
    )
    return section, console.figures(section)


def run_replica(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench import replica_ack

    steps = _pick(args.replica_steps, "8,32", "32", args.quick)
    section = replica_ack.run(
        steps=[int(s) for s in steps.split(",") if s.strip()],
        seconds=_pick(args.inbound_seconds, 3.0, 2.0, args.quick),
        rounds=_pick(args.replica_rounds, 3, 1, args.quick),
        warmup=_pick(args.inbound_warmup, 0.5, 0.5, args.quick),
    )
    return section, replica_ack.figures(section)


def run_records(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from ops.bench import records

    argv = ["--db", args.records_db, "--out", str(args.out)] + (["--quick"] if args.quick else [])
    if args.records_calls is not None:
        argv += ["--calls", str(args.records_calls)]
    section = records.run_from_args(records.parser().parse_args(argv))
    return section, records.figures(section)


RUNNERS: dict[str, Callable[[argparse.Namespace], tuple[dict[str, Any], list[dict[str, Any]]]]] = {
    "ami": run_ami,
    "routing": run_routing,
    "memory": run_memory,
    "inbound": run_inbound,
    "console": run_console,
    "records": run_records,
    "replica": run_replica,
}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| figure | value | goal | baseline | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = {True: "met", False: "**NOT met**", None: "-"}[r["met"]]
        cells = [r["figure"], r["value"], r["goal"], r["baseline"], verdict]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in RUNNERS]
    if unknown or not wanted:
        print(f"ops.bench: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    from ops.bench.ami_ingest.__main__ import setup_logging

    setup_logging("WARNING")
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "quick": args.quick,
            "sections": wanted,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
        }
    }
    rows: list[dict[str, Any]] = []
    counts_ok = True
    for name in wanted:
        began = time.perf_counter()
        print(f"ops.bench: {name} ...", file=sys.stderr, flush=True)
        try:
            section, section_rows = RUNNERS[name](args)
        except Exception as exc:  # one failing section must not hide the others' figures
            section = {"error": f"{type(exc).__name__}: {exc}", "counts_ok": False}
            section_rows = [
                {"figure": name, "value": f"FAILED: {section['error']}", "goal": "-", "baseline": "-", "met": False}
            ]
        section["seconds"] = round(time.perf_counter() - began, 1)
        print(f"ops.bench: {name} done in {section['seconds']} s", file=sys.stderr, flush=True)
        results[name] = section
        rows.extend(section_rows)
        counts_ok = counts_ok and bool(section.get("counts_ok"))
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    results["meta"]["load_average_at_end"] = list(os.getloadavg())
    results["figures"] = rows
    results["counts_ok"] = counts_ok
    table = markdown(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    title = (
        f"# Gateway benchmarks, {results['meta']['started_at']}{' (quick)' if args.quick else ''}\n\n"
        f"{os.cpu_count()} CPUs, load average {results['meta']['load_average_at_start'][0]:.2f} at start; "
        f"{results['meta']['duration_s']} s. Every figure beside its goal and its baseline measured in "
        f"the same run.\n\n"
    )
    for name in (f"bench-{stamp}", "bench-latest"):
        (args.out / f"{name}.json").write_text(
            json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (args.out / f"{name}.md").write_text(title + table, encoding="utf-8")
    print(f"results: {args.out / f'bench-{stamp}.json'} ({results['meta']['duration_s']} s)", file=sys.stderr)
    return 0 if counts_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
