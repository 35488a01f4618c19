"""Smoke tests of the benchmarks (ops/bench): tiny runs of each section and of the entry point
complete and everything sent was processed, stored or decided as the reference says. No timing
is asserted: figures depend on the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def test_tiny_benchmark_run_processes_everything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench.ami_ingest",
            "--events",
            "2000",
            "--runs",
            "2",
            "--rates",
            "20",
            "--seconds",
            "1",
            "--latency-runs",
            "2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| figure | value | goal | baseline / ratio |" in proc.stdout

    results: dict[str, Any] = json.loads((tmp_path / "ami_ingest-latest.json").read_text("utf-8"))
    assert (tmp_path / "ami_ingest-latest.md").is_file()
    assert {"meta", "stream", "ingest", "lettering", "counts_ok"} <= results.keys()
    assert results["counts_ok"] is True

    stream = results["stream"]
    assert stream["events"] >= 2000
    assert stream["expected_calls"] > 0 and stream["expected_letterings"] > 0

    ingest = results["ingest"]
    assert {
        "bare_events_per_s",
        "pipeline_events_per_s",
        "ratio",
        "goal_ratio",
        "runs",
        "expected",
        "counts_ok",
        "problems",
    } <= ingest.keys()
    assert ingest["problems"] == []
    assert [r["variant"] for r in ingest["runs"]] == ["bare", "pipeline", "bare", "pipeline"]
    for run in ingest["runs"]:
        assert run["events_seen"] == stream["events"]
        assert run["events_per_s"] > 0
        if run["variant"] == "pipeline":
            assert run["calls"] == stream["expected_calls"]
            assert run["letterings"] == stream["expected_letterings"]
            assert run["lettering_results"] == {"delivered": stream["expected_letterings"]}

    (rate,) = results["lettering"]["rates"]
    assert {
        "rate",
        "calls",
        "letterings_received",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "goal_p99_ms",
        "counts_ok",
    } <= rate.keys()
    assert rate["calls"] == 20
    assert rate["runs"] == 2 and len(rate["p99_runs_ms"]) == 2 and rate["p99_ms"] in rate["p99_runs_ms"]
    assert rate["letterings_received"] == rate["calls"]
    assert rate["calls_ended"] == rate["calls"]
    assert rate["invalid_requests"] == 0 and rate["unmatched_requests"] == 0
    assert rate["p50_ms"] is not None and rate["p50_ms"] <= rate["max_ms"]


def test_routing_bench_decides_like_the_naive_scan() -> None:
    from ops.bench import routing

    section = routing.run(seconds=0.05, rules_count=500, sample_size=200)
    assert section["rules"] == 500
    assert section["mismatches"] == [] and section["counts_ok"] is True
    assert set(section["mixes"]) == {"realistic", "no_keyword"}
    for mix in section["mixes"].values():
        assert mix["decisions"] >= 200 and mix["reference_decisions"] >= 200
        assert mix["decisions_per_s"] > 0 and mix["reference_per_s"] > 0
    assert (
        section["mixes"]["realistic"]["distinct_winning_rules"]
        > section["mixes"]["no_keyword"]["distinct_winning_rules"]
    )
    assert len(routing.figures(section)) == 3


def test_memory_bench_holds_every_call() -> None:
    from ops.bench import memory

    section = memory.run(calls=120)
    assert section["calls_fed"] == section["live_calls"] == 120
    assert section["live_legs"] >= 120 and section["events"] > 120
    assert section["bytes_held"] > 0 and section["bytes_per_call"] > 0
    assert section["counts_ok"] is True
    assert section["top_sites"]


def test_inbound_bench_finds_every_accepted_message_in_redis() -> None:
    from ops.bench import inbound

    section = inbound.run(steps=[2], seconds=0.5, warmup=0.2, rounds=2)
    (step,) = section["steps"]
    gateway, bare = step["gateway"], step["bare"]  # the round with the median ratio
    assert gateway["concurrency"] == bare["concurrency"] == 2
    assert gateway["errors"] == {} and bare["errors"] == {}
    assert set(gateway["statuses"]) == {"200"} and gateway["responses"] == gateway["requests"] > 0
    assert gateway["answers"] == {"accepted": gateway["responses"]}
    assert len(step["rounds"]) == 2 and step["ratio"] in [r["ratio"] for r in step["rounds"]]
    stored = section["stored"]
    assert len(stored["rounds"]) == 2 and len(section["warmup"]) == 2
    for check, warmup, round_ in zip(stored["rounds"], section["warmup"], step["rounds"], strict=True):
        # every round starts from an empty Redis: its answers (warm-up included) are all there
        assert round_["accepted"] > 0
        assert check["accepted_answers"] == warmup["answers"].get("accepted", 0) + round_["accepted"]
        assert check["stored_messages"] == check["accepted_answers"]
        assert sum(check["inbox_entries"].values()) == check["accepted_answers"]
        assert check["lost"] == 0 and check["unexpected_extra"] == 0
    assert stored["accepted_answers"] == sum(c["accepted_answers"] for c in stored["rounds"])
    assert section["counts_ok"] is True


def test_entry_point_writes_json_and_markdown(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench",
            "--only",
            "routing,memory",
            "--routing-seconds",
            "0.05",
            "--routing-sample",
            "100",
            "--memory-calls",
            "100",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| figure | value | goal | baseline | verdict |" in proc.stdout
    results: dict[str, Any] = json.loads((tmp_path / "bench-latest.json").read_text("utf-8"))
    assert (tmp_path / "bench-latest.md").read_text("utf-8").count("\n| ") >= 4
    assert results["counts_ok"] is True and results["meta"]["sections"] == ["routing", "memory"]
    assert {"routing", "memory", "figures"} <= results.keys()
    assert all({"figure", "value", "goal", "baseline", "met"} <= row.keys() for row in results["figures"])
    assert len(list(tmp_path.glob("bench-2*.json"))) == 1


def test_entry_point_rejects_unknown_sections(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench", "--only", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "unknown section" in proc.stderr


@pytest.mark.parametrize("step", ["accept", "hmac", "hmac_stdlib", "job_id", "uuid4", "route", "notify_job", "reply"])
def test_instruction_count_programs_run(step: str, redis_url: str) -> None:
    # What `ops.bench.instructions` runs under valgrind, run without it (valgrind takes minutes):
    # the programs must keep working as the code changes.
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench.instructions", "--child", step, "--n", "70", "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "child ok" in proc.stdout


def _records_section(tmp_path: Path, dbs: tuple[str, ...], *, intake: bool, latency: bool) -> dict[str, Any]:
    from ops.bench import records

    return records.run(
        calls=20_000,
        threads=600,
        dbs=dbs,
        report_runs=1,
        write_calls=2_500,
        batch=1000,
        intake_seconds=1.0,
        intake_rounds=1 if intake else 0,
        latency_runs=1 if latency else 0,
        latency_seconds=1.0,
        latency_rate=20.0,
        cache_dir=tmp_path,
        use_cache=True,
    )


def _check_database(result: dict[str, Any], spec: dict[str, Any]) -> None:
    report, write, purge = result["report"], result["write"], result["purge"]
    # the roll-ups' report and the raw GROUP BY agree row for row
    assert report["mismatches"] == [] and report["counts_ok"] is True
    assert report["rows"] > 10 and 0 < report["total"]["answered"] < report["total"]["calls"] < spec["calls"]
    # every fresh call stored once, the roll-ups moved by exactly the counted ones, a rewrite changed nothing
    assert write["problems"] == [] and write["calls"] == 2_500
    assert 0 < write["rollup_rows_counted"] < write["calls"]
    # exactly the expired working day went, roll-ups kept, four purges recorded
    assert purge["problems"] == [] and purge["day"] == "2025-01-02"
    assert purge["deleted"]["calls"] > 0 and set(purge["deleted"]) == {"calls", "messages", "thread_events", "sends"}


def test_records_bench_on_sqlite_checks_every_count(tmp_path: Path) -> None:
    from ops.bench import records

    section = _records_section(tmp_path, ("sqlite",), intake=True, latency=True)
    spec = section["spec"]
    assert section["year"]["counts"]["calls"] == spec["calls"] == 20_000
    assert section["year"]["cached"] is False
    _check_database(section["databases"]["sqlite"], spec)
    intake = section["databases"]["sqlite"]["intake"]
    assert intake["problems"] == [] and intake["stored"]["lost"] == 0
    assert len(intake["purged"]) == 1 and intake["purged"][0]["calls"] > 0
    latency = section["latency"]
    # records on: one `calls` row per call the gateway ended, nothing dropped
    assert latency["problems"] == [] and latency["rows_written"] == latency["calls_ended"] == 20
    assert section["counts_ok"] is True
    assert len(records.figures(section)) == 6  # the year, report, write, purge, intake, latency

    # a second run finds the generated year in the cache
    again = _records_section(tmp_path, ("sqlite",), intake=False, latency=False)
    assert again["year"]["cached"] is True and again["counts_ok"] is True


def test_records_bench_on_postgresql_agrees_with_sqlite(tmp_path: Path) -> None:
    section = _records_section(tmp_path, ("sqlite", "postgresql"), intake=False, latency=False)
    sqlite, pg = section["databases"]["sqlite"], section["databases"]["postgresql"]
    assert pg["load"]["counts"] == section["year"]["counts"]  # the same year copied over
    _check_database(pg, section["spec"])
    assert pg["report"]["total"] == sqlite["report"]["total"]
    assert pg["purge"]["deleted"] == sqlite["purge"]["deleted"]
    assert section["counts_ok"] is True


def test_console_bench_counts_every_page_event_and_message() -> None:
    from gateway.console.inbox import PAGE_SIZE
    from ops.bench import console

    section = console.run(
        threads=120,
        baseline_threads=10,
        requests=2,
        clients=3,
        messages=2,
        concurrency=2,
        seconds=0.5,
        warmup=0.2,
        rounds=1,
    )
    assert section["problems"] == [] and section["counts_ok"] is True
    inbox = section["inbox"]
    # every text became an open thread of the queue it was meant for, and the first page shows them
    assert inbox["queue_counts"][console.BIG_QUEUE]["open"] == 120
    assert inbox["queue_counts"][console.SMALL_QUEUE]["open"] == 10
    for kind in ("page", "list"):
        assert inbox["rows_on_first_page"][kind] == {"measured": min(PAGE_SIZE, 120), "baseline": 10}
        assert inbox[kind]["measured"]["n"] == inbox[kind]["baseline"]["n"] == 2
    # every stream saw every message, and every page's list, reloaded on the event, showed it
    for key, clients in (("visible_baseline", 1), ("visible", 3)):
        v = section[key]
        assert v["connected"] == clients and v["posted"] == 2 and v["missing"] == 0 and v["not_listed"] == 0
        assert v["from_2xx"]["n"] == v["listed_from_2xx"]["n"] == clients * 2
        assert v["reloads"] >= clients * 3 and v["reload_statuses"] == {"200": v["reloads"]}
    # intake with and without open pages: every accepted webhook stored, the pages refreshed
    intake = section["intake"]
    checks = intake["raw"]["checks"]
    assert [c["mode"] for c in checks] == ["without", "with"]
    assert all(c["accepted"] > 0 and c["stored"] == c["accepted"] and c["lost"] == 0 for c in checks)
    (pages,) = intake["raw"]["browsers"]
    assert pages["connected"] == 3 and pages["events"] > 0 and pages["refreshes"] > 0
    assert set(pages["statuses"]) == {"200"} and pages["errors"] == {}
    assert len(console.figures(section)) == 5


def test_replica_bench_finds_every_acknowledged_message_on_the_replica() -> None:
    from ops.bench import replica_ack

    section = replica_ack.run(steps=[2], seconds=0.5, warmup=0.2, rounds=1)
    checks = section["checks"]
    # one run of each mode, each from an empty Redis, ack 1 counted on the replica itself
    assert [(c["min_replicas_ack"], c["counted_on"], c["replicated_wire"]) for c in checks] == [
        (0, "primary", False),
        (1, "replica", True),
    ]
    assert all(c["accepted_answers"] > 0 and c["stored_messages"] == c["accepted_answers"] for c in checks)
    assert section["lost_on_replica"] == section["lost_on_primary"] == 0 and section["counts_ok"] is True
    assert section["accepted_ack1"] == checks[1]["accepted_answers"]
    assert section["ack_timeouts"] == section["non_2xx"] == 0
    assert len(replica_ack.figures(section)) == 2
