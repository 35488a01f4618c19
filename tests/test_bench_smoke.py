"""Smoke test of the AMI ingest benchmark (ops/bench/ami_ingest): a tiny run completes and
everything sent was processed. No timing is asserted: figures depend on the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


def test_tiny_benchmark_run_processes_everything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench.ami_ingest", "--events", "2000", "--runs", "2", "--rates", "20",
         "--seconds", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
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
    assert {"bare_events_per_s", "pipeline_events_per_s", "ratio", "goal_ratio", "runs", "expected",
            "counts_ok", "problems"} <= ingest.keys()
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
    assert {"rate", "calls", "letterings_received", "p50_ms", "p95_ms", "p99_ms", "max_ms", "goal_p99_ms",
            "counts_ok"} <= rate.keys()
    assert rate["calls"] == 20
    assert rate["letterings_received"] == rate["calls"]
    assert rate["calls_ended"] == rate["calls"]
    assert rate["invalid_requests"] == 0 and rate["unmatched_requests"] == 0
    assert rate["p50_ms"] is not None and rate["p50_ms"] <= rate["max_ms"]
