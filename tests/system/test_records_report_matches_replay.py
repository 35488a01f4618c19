"""Issue #15's acceptance check: every recorded transcript replayed with `--records`, then
`gateway report answer-rate --format csv` over that store, gives the counts the replay's own
`call` decisions give (outbound calls to Korean mobiles and how many were answered, per
department and in total). Both commands run as the CLI runs them."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from gateway.app.cli import main
from gateway.domain.numbers import NumberPlan
from gateway.domain.records import seoul_day
from gateway.rules.ruleset import load_all
from tests.conftest import RULES, TRANSCRIPTS

KEY = "test-number-key-0123456789"


def test_answer_rate_csv_counts_equal_the_replays_call_decisions(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_NUMBER_KEY", KEY)
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    files = sorted(str(p) for p in TRANSCRIPTS.glob("*.ami"))
    assert len(files) >= 20

    assert main(["replay", *files, "--json", "--records", url]) == 0
    decisions = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    calls = [d for d in decisions if d["event"] == "call"]
    assert calls, "the transcripts hold calls"

    # What the report must say, from the decisions alone.
    directory = load_all(RULES).rules.directory
    plan = NumberPlan()
    want_calls: Counter[str] = Counter()
    want_answered: Counter[str] = Counter()
    for c in calls:
        if c["direction"] != "outbound" or plan.classify(c["party"]).kind.value != "mobile":
            continue
        department = directory.lookup(c["extension"])
        key = department.id if department else ""
        want_calls[key] += 1
        want_answered[key] += c["disposition"] == "answered"
    assert sum(want_calls.values()) >= 3, "several outbound calls to mobiles in the recordings"
    days = sorted(str(seoul_day(c["started_at"])) for c in calls)

    out = tmp_path / "answer-rate.csv"
    argv = ["report", "answer-rate", "--records", url, "--since", days[0], "--until", days[-1]]
    assert main([*argv, "--by", "department", "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    body = [r for r in rows if r["department"] not in ("", "total", "합계")]
    total = [r for r in rows if r not in body]
    got_calls = {r["department"]: int(r["calls"]) for r in body}
    got_answered = {r["department"]: int(r["answered"]) for r in body}
    want_named = {k or "(unknown)": v for k, v in want_calls.items()}
    want_named_answered = {k or "(unknown)": v for k, v in want_answered.items()}
    assert {k: v for k, v in got_calls.items() if v} == want_named
    assert {k: got_answered[k] for k in want_named} == want_named_answered
    assert len(total) == 1
    assert int(total[0]["calls"]) == sum(want_calls.values())
    assert int(total[0]["answered"]) == sum(want_answered.values())
