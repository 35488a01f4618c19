"""`gateway report answer-rate` and `gateway report inbox` (parsed by `gateway.app.recordscli`).

Exit codes: 0 the report was written; 1 the records database cannot give it (unreachable, no
schema, a schema of another release, nothing recorded in the period... the message says
which); 2 bad arguments (a date that is not YYYY-MM-DD, --since after --until, an xlsx or
pdf without --out).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import GatewayError
from gateway.records import reports
from gateway.records.render import (
    Sheet,
    comparison_sheet,
    inbox_sheet,
    rate_sheet,
    render_csv,
    render_table,
    render_xlsx,
    write_csv,
)

RATE_TITLES = {"department": "부서별 응답률", "day": "일별 응답률", "lettering": "문자 결과별 응답률"}
INBOX_TITLES = {"queue": "대기열별", "rule": "분류 규칙별", "tag": "태그별", "day": "일별"}


class UsageProblem(Exception):
    """Bad arguments: exit 2 with this message."""


class NoReport(Exception):
    """The database cannot give the report: exit 1 with this message."""


def parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise UsageProblem(f"{flag} {text!r} is not a date: use YYYY-MM-DD (a day in Asia/Seoul)") from None


def parse_period(since: str, until: str, what: str = "--since/--until") -> tuple[date, date]:
    first = parse_day(since, "--since" if what == "--since/--until" else what)
    last = parse_day(until, "--until" if what == "--since/--until" else what)
    if first > last:
        raise UsageProblem(f"{what}: {first} is after {last}")
    return first, last


def parse_compare(text: str) -> tuple[date, date]:
    """'2026-01-01..2026-03-31' (both days included)."""
    first, sep, last = text.partition("..")
    if not sep:
        raise UsageProblem(f"--compare {text!r}: write the period as YYYY-MM-DD..YYYY-MM-DD")
    return parse_period(first.strip(), last.strip(), "--compare")


def _check_output(fmt: str, out_path: Path | None) -> None:
    if fmt in ("xlsx", "pdf") and out_path is None:
        raise UsageProblem(f"--format {fmt} writes a file: give --out FILE.{fmt}")


def department_names(args: argparse.Namespace) -> dict[str, str]:
    """Department id -> Korean name from the directory (rules/directory.yaml); {} when the rules
    cannot be read (the report then shows the ids alone)."""
    from gateway.infra.config import load_config
    from gateway.rules.directory import read_directory

    try:
        config = load_config(getattr(args, "config", None))
        doc, _problems = read_directory(config.rules_dir)
    except (GatewayError, OSError, ValueError):
        return {}
    data = doc.data if doc is not None else None
    names: dict[str, str] = {}
    if isinstance(data, Mapping) and isinstance(data.get("departments"), list):
        for dept in data["departments"]:
            if isinstance(dept, Mapping) and isinstance(dept.get("id"), str) and isinstance(dept.get("name"), str):
                names[dept["id"]] = dept["name"]
    return names


def queue_names(args: argparse.Namespace) -> dict[str, str]:
    """Queue id -> the name staff know it by, from routing.yaml (a department's own queue,
    `dept:<id>`, by the directory's department name); {} when the rules cannot be read."""
    from gateway.infra.config import load_config
    from gateway.rules.routing import load_routing_rules

    try:
        routing = load_routing_rules(load_config(getattr(args, "config", None)).rules_dir)
    except (GatewayError, OSError, ValueError):
        return {}
    names = {f"dept:{k}": v for k, v in department_names(args).items()}
    if routing is not None:
        names.update({q: info.name for q, info in routing.queues.items()})
    return names


async def _with_store(url: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open the store, refuse a database that is not this release's schema, run `body(engine)`."""
    from gateway.records.store import RecordsError, RecordsStore

    store = RecordsStore(url)
    try:
        status = await store.status()
        if status.state == "empty":
            raise NoReport(f"records database {store.masked_url} is empty: nothing has been recorded there")
        if status.state != "current":
            await store.ready(create_if_empty=False)  # raises with the message naming the command
        return await body(store.engine)
    except RecordsError as exc:
        raise NoReport(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise NoReport(f"records database {store.masked_url}: the report failed: {exc}") from exc
    finally:
        await store.close()


def _existing(url: str) -> str:
    """The URL, unless it names a SQLite file that is not there (opening it would create it)."""
    from gateway.records.store import mask_url

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NoReport(f"no records database at {mask_url(url)}: nothing has been recorded there")
    return url


def _emit(sheet: Sheet, fmt: str, out_path: Path | None, out: TextIO) -> None:
    if fmt == "table":
        text = render_table(sheet)
    elif fmt == "csv":
        if out_path is not None:
            write_csv(sheet, out_path)
            return
        text = render_csv(sheet)
    elif fmt == "xlsx":
        assert out_path is not None
        render_xlsx(sheet, out_path)
        return
    else:
        raise UsageProblem(f"--format {fmt}: not for this report")
    if out_path is not None:
        out_path.write_text(text, encoding="utf-8")
    else:
        out.write(text)


def _run(work: Callable[[], int]) -> int:
    try:
        return work()
    except UsageProblem as exc:
        print(f"gateway report: {exc}", file=sys.stderr)
        return 2
    except (NoReport, GatewayError) as exc:  # GatewayError: e.g. the PDF's font is missing
        print(f"gateway report: {exc}", file=sys.stderr)
        return 1


def cmd_answer_rate(args: argparse.Namespace, url: str, out: TextIO) -> int:
    """`gateway report answer-rate`: per department, day or lettering outcome, or two periods."""

    def work() -> int:
        since, until = parse_period(args.since, args.until)
        before = parse_compare(args.compare) if args.compare else None
        _check_output(args.format, args.out)
        departments = tuple(args.department or ())

        async def query(engine: Any) -> Any:
            if before is None:
                return await reports.answer_rate(engine, since, until, args.by, departments)
            return await reports.compare_periods(engine, before, (since, until), args.by, departments)

        rows = asyncio.run(_with_store(_existing(url), query))
        if rows[-1].key == reports.TOTAL and _calls_of(rows[-1]) == 0:
            raise NoReport(f"no outbound calls to mobiles recorded from {since} to {until}")
        names = department_names(args)
        title = f"{RATE_TITLES[args.by]} {since} ~ {until}"
        if before is None:
            sheet = rate_sheet(title, rows, args.by, names)
        else:
            title += f" (비교: {before[0]} ~ {before[1]})"
            sheet = comparison_sheet(title, rows, args.by, names)
        _emit(sheet, args.format, args.out, out)
        return 0

    return _run(work)


def _calls_of(row: Any) -> int:
    """Calls of a total row: a RateRow's, or a comparison's two periods together."""
    if hasattr(row, "calls"):
        return int(row.calls)
    return int(row.before.calls) + int(row.after.calls)


def cmd_inbox(args: argparse.Namespace, url: str, out: TextIO) -> int:
    """`gateway report inbox`: the duty/complaint report, also as the monthly PDF."""

    def work() -> int:
        since, until = parse_period(args.since, args.until)
        _check_output(args.format, args.out)

        async def query(engine: Any) -> Any:
            return await reports.inbox_report(engine, since, until, args.by)

        rows = asyncio.run(_with_store(_existing(url), query))
        if rows[-1].received == 0:
            raise NoReport(f"no citizens' messages recorded from {since} to {until}")
        title = f"당직·민원 문자 처리 현황 ({INBOX_TITLES[args.by]}) {since} ~ {until}"
        sheet = inbox_sheet(title, rows, args.by, queue_names(args) if args.by == "queue" else None)
        if args.format == "pdf":
            from gateway.records.pdf import inbox_pdf

            assert args.out is not None
            args.out.write_bytes(inbox_pdf(sheet, rows, by=args.by, since=since, until=until))
            return 0
        _emit(sheet, args.format, args.out, out)
        return 0

    return _run(work)
