"""The records store on both databases (a SQLite file and a private PostgreSQL): migrations from
empty and from the previous release's schema, idempotent writes, the roll-ups against the raw
calls, the thread lifecycle, the sends' latest-state rule, the schema checks and their errors."""

from __future__ import annotations

import asyncio
import io
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, select, text

from gateway.app.cli import main as cli_main
from gateway.domain.records import CallFact, SendFact, ThreadFact, seoul_day
from gateway.records import schema
from gateway.records.store import (
    RecordsError,
    RecordsSchemaMismatch,
    RecordsStore,
    cmd_status,
    mask_url,
)
from gateway.sim.pgproc import PostgresProcess
from gateway.sim.redisproc import free_port
from tests.conftest import ROOT, RULES

DAY0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC = 09:00 in Seoul


@pytest.fixture
async def store(records_url: str) -> AsyncIterator[RecordsStore]:
    s = RecordsStore(records_url)
    try:
        yield s
    finally:
        await s.close()


def call(n: int, **kw: Any) -> CallFact:
    values: dict[str, Any] = {
        "pbx": "city-hall",
        "call_id": f"c{n}",
        "direction": "outbound",
        "extension": "2001",
        "department": "civil",
        "party_hash": f"h{n % 7}",
        "party_kind": "mobile",
        "disposition": "answered",
        "cause": "16",
        "started_at": DAY0 + n * 60,
        "answered_at": DAY0 + n * 60 + 5,
        "ended_at": DAY0 + n * 60 + 65,
        "ring_seconds": 5.4,
        "talk_seconds": 60.0,
        "lettering": "delivered",
    }
    values.update(kw)
    return CallFact(**values)


def mixed_calls(count: int, seed: int = 15) -> list[CallFact]:
    """Calls over several days, departments, outcomes, kinds and ring times (some past the cap)."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        lettering = rnd.choice(["delivered", "unsupported_device", "not_subscribed", "failed", "skipped"])
        out.append(
            call(
                n,
                started_at=DAY0 + n * 997.3,  # crosses Seoul midnights
                department=rnd.choice(["civil", "tax", "welfare", ""]),
                direction=rnd.choice(["outbound", "outbound", "outbound", "inbound", "internal"]),
                party_kind=rnd.choice(["mobile", "mobile", "mobile", "landline", "extension"]),
                disposition=rnd.choice(["answered", "answered", "no_answer", "busy"]),
                ring_seconds=rnd.choice([0.0, 0.99, 4.5, 17.2, 179.9, 180.0, 240.7]),
                lettering=lettering,
                lettering_reason=rnd.choice(["landline", "opted_out", ""]) if lettering == "skipped" else "carrier x",
            )
        )
    return out


async def rows(s: RecordsStore, sql: str) -> list[tuple[Any, ...]]:
    async with s.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


ANSWER_ROLLUP = "SELECT day, department, lettering, reason, calls, answered FROM answer_daily ORDER BY 1, 2, 3, 4"
RING_ROLLUP = "SELECT day, department, lettering, ring_s, answered FROM ring_daily ORDER BY 1, 2, 3, 4"
ANSWER_MONTHLY = "SELECT month, department, lettering, reason, calls, answered FROM answer_monthly ORDER BY 1, 2, 3, 4"
RING_MONTHLY = "SELECT month, department, lettering, ring_s, answered FROM ring_monthly ORDER BY 1, 2, 3, 4"


def monthly_of(
    answers: list[tuple[Any, ...]], rings: list[tuple[Any, ...]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The expected daily roll-ups summed per month ('YYYY-MM'), in Python."""
    am: dict[tuple[Any, ...], list[int]] = {}
    for day, dep, let, why, c, a in answers:
        agg = am.setdefault((day[:7], dep, let, why), [0, 0])
        agg[0] += c
        agg[1] += a
    rm: dict[tuple[Any, ...], int] = {}
    for day, dep, let, sec, n in rings:
        rm[(day[:7], dep, let, sec)] = rm.get((day[:7], dep, let, sec), 0) + n
    return sorted((*k, c, a) for k, (c, a) in am.items()), sorted((*k, n) for k, n in rm.items())


def expected_rollups(facts: list[CallFact]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The roll-ups computed from the facts in Python, independently of the store's code."""
    answers: dict[tuple[str, str, str, str], list[int]] = {}
    rings: dict[tuple[str, str, str, int], int] = {}
    for f in {f.key: f for f in facts}.values():
        if f.direction != "outbound" or f.party_kind != "mobile":
            continue
        key = (
            seoul_day(f.started_at).isoformat(),
            f.department,
            f.lettering,
            f.lettering_reason if f.lettering == "skipped" else "",
        )
        agg = answers.setdefault(key, [0, 0])
        agg[0] += 1
        if f.disposition == "answered":
            agg[1] += 1
            rk = (key[0], key[1], key[2], min(int(f.ring_seconds), schema.RING_CAP_S))
            rings[rk] = rings.get(rk, 0) + 1
    return (
        sorted((*k, c, a) for k, (c, a) in answers.items()),
        sorted((*k, n) for k, n in rings.items()),
    )


# -- schema -----------------------------------------------------------------------------------


async def test_migrate_from_empty_matches_the_schema(empty_records_url: str) -> None:
    s = RecordsStore(empty_records_url)
    try:
        before = await s.status()
        assert (before.current, before.state) == (None, "empty")
        after = await s.migrate()
        assert (after.current, after.state) == (after.head, "current")
        assert after.head == "0004"
        counts = await s.counts()
        assert set(counts) == set(schema.metadata.tables)
        # Empty, but for the two access-record chains' head rows the migration creates.
        assert counts.pop("audit_heads") == 2
        assert set(counts.values()) == {0}

        def diff(sync: Connection) -> list[Any]:
            return list(compare_metadata(MigrationContext.configure(sync), schema.metadata))

        async with s.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
        # Migrating again changes nothing.
        assert (await s.migrate()).state == "current"
    finally:
        await s.close()


async def test_ready_creates_an_empty_database(empty_records_url: str) -> None:
    s = RecordsStore(empty_records_url)
    try:
        with pytest.raises(RecordsSchemaMismatch, match="run `gateway records migrate`"):
            await s.ready(create_if_empty=False)
        await s.ready()
        assert (await s.status()).state == "current"
    finally:
        await s.close()


async def test_processes_starting_together_migrate_once(empty_records_url: str) -> None:
    stores = [RecordsStore(empty_records_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.ready() for s in stores))
        assert {(await s.status()).state for s in stores} == {"current"}
        assert await rows(stores[0], "SELECT version_num FROM alembic_version") == [("0004",)]
    finally:
        for s in stores:
            await s.close()


async def test_a_previous_release_database_is_refused_then_migrated_with_its_calls(empty_records_url: str) -> None:
    """Release 0001 stored calls without roll-ups: the gateway refuses it (and says what to run);
    `migrate` keeps every row and backfills the roll-ups as the writer would have kept them."""
    old = RecordsStore(empty_records_url)
    facts = mixed_calls(300)
    try:
        assert (await old.migrate_to("0001")).current == "0001"
        # Insert the way release 0001 did: plain SQL into its own table (no roll-ups exist).
        async with old.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO calls (id, pbx, call_id, direction, extension, department, party_hash, "
                    "party_kind, disposition, cause, started_at, answered_at, ended_at, day, ring_seconds, "
                    "talk_seconds, lettering, lettering_reason, call_notice, postcall, transfers, recovered) "
                    "VALUES (:id, :pbx, :call_id, :direction, :extension, :department, :party_hash, "
                    ":party_kind, :disposition, :cause, :started_at, :answered_at, :ended_at, :day, "
                    ":ring_seconds, :talk_seconds, :lettering, :lettering_reason, '', '', 0, false)"
                ),
                [
                    {
                        "id": f.key,
                        "day": seoul_day(f.started_at).isoformat(),
                        **{c.name: getattr(f, c.name) for c in schema.calls.c if c.name not in ("id", "day")},
                    }
                    for f in facts
                ],
            )
        st = await old.status()
        assert (st.current, st.state) == ("0001", "behind")
        with pytest.raises(RecordsSchemaMismatch) as refused:
            await old.ready()
        assert str(refused.value) == (
            f"records database {mask_url(empty_records_url)} is at revision 0001, this release needs 0004: "
            "run `gateway records migrate`"
        )
        out = io.StringIO()
        assert await asyncio.to_thread(cmd_status, empty_records_url, out) == 1
        assert "state: behind" in out.getvalue()
        assert "gateway records migrate" in out.getvalue()

        assert (await old.migrate()).state == "current"
        assert (await old.counts())["calls"] == len(facts)
        answers, rings = expected_rollups(facts)
        assert await rows(old, ANSWER_ROLLUP) == answers
        assert await rows(old, RING_ROLLUP) == rings
        # 0003 summed 0002's daily backfill per month.
        months, ring_months = monthly_of(answers, rings)
        assert await rows(old, ANSWER_MONTHLY) == months
        assert await rows(old, RING_MONTHLY) == ring_months
        # The writer continues from the backfill: the old calls again are duplicates.
        counts = await old.write(facts[:50])
        assert (counts.calls, counts.duplicates) == (0, 50)
        assert await rows(old, ANSWER_ROLLUP) == answers
        assert await rows(old, ANSWER_MONTHLY) == months
    finally:
        await old.close()


async def test_a_newer_release_database_is_refused(store: RecordsStore) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    st = await store.status()
    assert (st.current, st.state) == ("0099", "ahead")
    with pytest.raises(RecordsSchemaMismatch, match="newer than this release"):
        await store.ready()
    with pytest.raises(RecordsSchemaMismatch, match="newer than this release"):
        await store.migrate()


# -- writing ----------------------------------------------------------------------------------


async def test_writes_are_idempotent_and_rollups_equal_a_group_by(store: RecordsStore) -> None:
    facts = mixed_calls(2500)
    first = await store.write(facts[:1200])
    second = await store.write(facts[1000:])  # overlaps: 200 already stored
    assert (first.calls, first.duplicates) == (1200, 0)
    assert (second.calls, second.duplicates) == (1300, 200)
    answers, rings = expected_rollups(facts)
    assert await rows(store, ANSWER_ROLLUP) == answers
    assert await rows(store, RING_ROLLUP) == rings

    # The roll-ups equal a GROUP BY over the stored calls.
    group_by = await rows(
        store,
        "SELECT day, department, lettering, CASE WHEN lettering = 'skipped' THEN lettering_reason ELSE '' END, "
        "COUNT(*), SUM(CASE WHEN disposition = 'answered' THEN 1 ELSE 0 END) FROM calls "
        "WHERE direction = 'outbound' AND party_kind = 'mobile' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    assert [tuple(int(x) if i >= 4 else x for i, x in enumerate(r)) for r in group_by] == answers

    # Everything again (a redelivered batch, and duplicates inside one batch): nothing changes.
    again = await store.write(facts + facts[:10])
    assert (again.calls, again.duplicates) == (0, len(facts) + 10)
    assert await rows(store, ANSWER_ROLLUP) == answers
    assert await rows(store, RING_ROLLUP) == rings
    assert (await store.counts())["calls"] == len(facts)
    # The monthly roll-ups, kept by the same writes, are the daily ones summed per month.
    months, ring_months = monthly_of(answers, rings)
    assert await rows(store, ANSWER_MONTHLY) == months
    assert await rows(store, RING_MONTHLY) == ring_months


async def test_the_same_call_twice_in_one_batch_counts_once(store: RecordsStore) -> None:
    counts = await store.write([call(1), call(1), call(2, disposition="no_answer")])
    assert (counts.calls, counts.duplicates) == (2, 1)
    assert await rows(store, "SELECT calls, answered FROM answer_daily") == [(2, 1)]


async def test_calls_are_stored_as_given(store: RecordsStore) -> None:
    f = call(7, started_at=DAY0 + 15 * 3600 + 30, answered_at=None, disposition="no_answer", recovered=True)
    await store.write([f])
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(schema.calls))).mappings().one()
    assert row["id"] == "city-hall:c7"
    assert row["day"] == "2026-01-02"  # 00:00:30 in Seoul on the next day
    assert row["answered_at"] is None
    assert row["recovered"] is True
    assert row["party_hash"] == "h0"


async def test_thread_lifecycle_updates_the_messages(store: RecordsStore) -> None:
    t = "th1"
    facts = [
        ThreadFact(t, "received", DAY0, "m1", message="m1", queue="duty", rule="night", tags=("noise", "road")),
        ThreadFact(t, "auto_replied", DAY0 + 2, "m1", message="m1", detail="sent"),
        ThreadFact(t, "received", DAY0 + 30, "m2", message="m2", queue="duty", after_hours=True),
        ThreadFact(t, "claimed", DAY0 + 40, "staff7", staff="staff7"),
        ThreadFact(t, "answered", DAY0 + 100, "r1", staff="staff7", sealed_text="v1:sealed"),
    ]
    counts = await store.write(facts)
    assert (counts.events, counts.duplicates) == (5, 0)
    # A later batch: a second answer (not the first response), then the close; the first
    # batch redelivered changes nothing.
    later = [
        ThreadFact(t, "answered", DAY0 + 200, "r2", staff="staff7"),
        ThreadFact(t, "received", DAY0 + 250, "m3", message="m3", queue="duty"),
        ThreadFact(t, "closed", DAY0 + 300, "staff7", staff="staff7"),
    ]
    counts = await store.write(later + facts)
    assert (counts.events, counts.duplicates) == (3, 5)
    got = await rows(
        store,
        "SELECT id, queue, rule, tags, after_hours, auto_replied_at, auto_reply, first_response_at, closed_at "
        "FROM messages ORDER BY id",
    )
    assert got == [
        ("m1", "duty", "night", "noise,road", False, DAY0 + 2, "sent", DAY0 + 100, DAY0 + 300),
        ("m2", "duty", "", "", True, None, "", DAY0 + 100, DAY0 + 300),
        ("m3", "duty", "", "", False, None, "", None, DAY0 + 300),
    ]
    assert (await store.counts())["thread_events"] == 8


async def test_sends_keep_the_latest_state(store: RecordsStore) -> None:
    def send(state: str, at: float, reference: str = "") -> SendFact:
        return SendFact("k1", "postcall", "alimtalk", "nhn", state, at, party_hash="h", reference=reference)

    first = await store.write([send("queued", DAY0), send("sent", DAY0 + 1, reference="ref-1")])
    assert (first.sends, first.duplicates) == (1, 1)  # two facts, one send row
    late = await store.write([send("delivered", DAY0 + 5), send("queued", DAY0)])
    assert late.sends == 1
    older = await store.write([send("sent", DAY0 + 1, reference="ref-1")])  # a late, older report
    assert (older.sends, older.duplicates) == (0, 1)
    got = await rows(store, "SELECT state, first_at, updated_at, reference, day FROM sends")
    # The reference once known is kept when a later state has none.
    assert got == [("delivered", DAY0, DAY0 + 5, "ref-1", "2026-01-01")]


async def test_text_longer_than_a_column_is_cut_not_refused(store: RecordsStore) -> None:
    counts = await store.write(
        [call(1, cause="x" * 500), SendFact("k", "reply", "sms", "p", "failed", DAY0, detail="e" * 999)]
    )
    assert (counts.calls, counts.sends) == (1, 1)
    assert await rows(store, "SELECT length(cause) FROM calls") == [(64,)]


# -- URLs and errors --------------------------------------------------------------------------


def test_urls_are_checked_and_passwords_masked(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="unsupported scheme 'mysql'") as bad:
        RecordsStore("mysql://gw:hunter2@db/records")
    assert "hunter2" not in str(bad.value)
    assert "mysql://gw:***@db/records" in str(bad.value)
    with pytest.raises(RecordsError, match="in-memory"):
        RecordsStore("sqlite:///:memory:")
    assert mask_url("postgresql://gw:s3cr:et@host:5432/db") == "postgresql://gw:***@host:5432/db"
    assert mask_url("postgresql://gw@host/db") == "postgresql://gw@host/db"
    nested = tmp_path / "a" / "b" / "records.sqlite3"
    s = RecordsStore(f"sqlite:///{nested}")
    assert s.dialect == "sqlite"
    assert nested.parent.is_dir()
    assert RecordsStore("postgres://gw@127.0.0.1/x").dialect == "postgresql"


async def test_unreachable_postgresql_is_a_records_error_naming_the_masked_url() -> None:
    url = f"postgresql://gw:topsecret@127.0.0.1:{free_port()}/records"
    s = RecordsStore(url)
    try:
        with pytest.raises(RecordsError) as failed:
            await s.ready()
    finally:
        await s.close()
    message = str(failed.value)
    assert "topsecret" not in message
    assert f"postgresql://gw:***@127.0.0.1:{url.split(':')[3]}" in message


async def test_a_database_that_does_not_exist_is_a_records_error(pg_server: PostgresProcess) -> None:
    url = pg_server.url_for("no_such_db").replace("gw@", "gw:pw123@")
    s = RecordsStore(url)
    try:
        with pytest.raises(RecordsError, match="no_such_db") as failed:
            await s.status()
    finally:
        await s.close()
    assert "pw123" not in str(failed.value)
    assert "gw:***@" in str(failed.value)


# -- the commands -----------------------------------------------------------------------------


def test_records_migrate_and_status_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'records.sqlite3'}"
    assert cli_main(["records", "status", "--records", url]) == 1
    assert "state: empty" in capsys.readouterr().out
    assert cli_main(["records", "migrate", "--records", url]) == 0
    assert "migrated empty -> 0004" in capsys.readouterr().out
    assert cli_main(["records", "migrate", "--records", url]) == 0
    assert "already at 0004" in capsys.readouterr().out

    async def fill() -> None:
        s = RecordsStore(url)
        await s.write([call(1), call(2, started_at=DAY0 + 86_400)])
        await s.close()

    asyncio.run(fill())
    assert cli_main(["records", "status", "--records", url]) == 0
    out = capsys.readouterr().out
    assert "state: current" in out
    assert "revision: 0004" in out
    assert "calls" in out and "2 rows" in out
    assert "days: 2026-01-01 .. 2026-01-02" in out


def test_bad_records_url_on_the_command_line_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["records", "status", "--records", "oracle://u:pw@h/db"]) == 1
    out = capsys.readouterr().out
    assert "unsupported scheme 'oracle'" in out and ":pw@" not in out


def _gateway_yaml(tmp_path: Path, records: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
pbx:
  - {{name: hall, host: 127.0.0.1, port: {free_port()}, username: gw, secret_env: TEST_AMI_SECRET}}
rules_dir: {RULES}
redis: {{url_env: TEST_REDIS_URL}}
http: {{host: 127.0.0.1, port: {free_port()}}}
outbox: {{number_key_env: TEST_NUMBER_KEY, data_key_env: TEST_DATA_KEY}}
records: {{url: "{records}", url_env: TEST_RECORDS_URL}}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("command", ["run", "worker"])
def test_gateway_and_worker_refuse_a_schema_behind(tmp_path: Path, command: str) -> None:
    async def previous_release() -> None:
        s = RecordsStore(f"sqlite:///{tmp_path / 'old.sqlite3'}")
        await s.migrate_to("0001")
        await s.close()

    asyncio.run(previous_release())
    config = _gateway_yaml(tmp_path, "sqlite:///old.sqlite3")  # relative: next to gateway.yaml
    env = {k: v for k, v in os.environ.items() if k != "TEST_RECORDS_URL"}
    env.update(TEST_AMI_SECRET="x", TEST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", command, "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "is at revision 0001, this release needs 0004: run `gateway records migrate`" in done.stderr
    assert str(tmp_path / "old.sqlite3") in done.stderr


async def test_tables_without_a_revision_are_refused(tmp_path: Path) -> None:
    """Tables made by `metadata.create_all` (not by a release) are not mistaken for a schema."""
    s = RecordsStore(f"sqlite:///{tmp_path / 'hand.sqlite3'}")
    try:
        async with s.engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        st = await s.status()
        assert (st.current, st.state) == (None, "behind")
        with pytest.raises(RecordsSchemaMismatch, match="no schema revision"):
            await s.ready()
    finally:
        await s.close()
