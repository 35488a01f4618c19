"""Reports as a text table, CSV or an Excel workbook.

A report is first a `Sheet`: columns with a stable English snake_case name (CSV headers, for
machines) and a Korean heading (the table and the workbook, for staff), and rows of plain values
(text, counts, fractions, seconds). The three renderers only format:

- table: aligned text for a terminal; Hangul is two columns wide (`unicodedata.east_asian_width`).
- CSV: the machine names as headers, rates as fractions (0..1, four decimals), seconds with one
  decimal. Files get UTF-8 with a BOM so that Excel opens Hangul right; standard output gets
  plain UTF-8 (a BOM would be the first bytes a script reads).
- XLSX (openpyxl): Korean headings in a bold, frozen first row, rates as percentages, durations
  as [h]:mm:ss, column widths fitted to the content.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Literal

from gateway.domain.analytics import Comparison, RateRow
from gateway.domain.records import LetteringKind
from gateway.records.reports import NONE_KEY, TOTAL, InboxRow

Kind = Literal["key", "text", "count", "rate", "points", "seconds", "flag"]
Value = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # English snake_case: the CSV header, stable across releases
    heading: str  # what staff read (Korean)
    kind: Kind = "text"  # "key": the group; CSV keeps "total" and "-", staff read 합계, (미지정)


@dataclass(frozen=True, slots=True)
class Sheet:
    title: str  # Korean, e.g. "부서별 응답률 2026-11-01 ~ 2026-11-30"
    columns: Sequence[Column]
    rows: list[Sequence[Value]] = field(default_factory=list)


# What staff call the lettering outcomes and the report's groups.
LETTERING_NAMES = {
    LetteringKind.DELIVERED.value: "문자 표시됨",
    LetteringKind.UNSUPPORTED_DEVICE.value: "미지원 단말(알림톡)",
    LetteringKind.NOT_SUBSCRIBED.value: "미가입",
    LetteringKind.FAILED.value: "실패",
    LetteringKind.SKIPPED.value: "요청 안 함",
}
RATE_KEY_HEADINGS = {"department": "부서", "day": "일자", "lettering": "문자 결과"}
INBOX_KEY_HEADINGS = {"queue": "대기열", "rule": "분류 규칙", "tag": "태그", "day": "일자"}
TOTAL_NAME = "합계"
KEY_NAMES = {TOTAL: TOTAL_NAME, NONE_KEY: "(미지정)"}


def _name(by: str, key: str, names: Mapping[str, str]) -> str:
    """The Korean name shown beside a key: the directory's department name, the outcome's."""
    if key == TOTAL:
        return ""  # the key column already reads 합계
    if by == "lettering":
        base, _, reason = key.partition("/")
        label = LETTERING_NAMES.get(base, base)
        return f"{label} ({reason})" if reason else label
    if key == NONE_KEY:
        return ""
    return names.get(key, "")


def rate_sheet(title: str, rows: Sequence[RateRow], by: str, names: Mapping[str, str] | None = None) -> Sheet:
    """An answer-rate report (`reports.answer_rate`); `names` maps department ids to names."""
    named = by in ("department", "lettering")
    columns = [Column(by, RATE_KEY_HEADINGS.get(by, by), "key")]
    if named:
        columns.append(Column(f"{by}_name", "이름"))
    columns += [
        Column("calls", "발신(휴대전화)", "count"),
        Column("answered", "응답", "count"),
        Column("answer_rate", "응답률", "rate"),
        Column("ci_low", "95% 하한", "rate"),
        Column("ci_high", "95% 상한", "rate"),
        Column("median_ring_s", "응답까지(초, 중앙값)", "seconds"),
    ]
    out: list[Sequence[Value]] = []
    for r in rows:
        head: list[Value] = [r.key]
        if named:
            head.append(_name(by, r.key, names or {}))
        out.append([*head, r.calls, r.answered, r.rate, r.low, r.high, r.median_ring_s])
    return Sheet(title, columns, out)


def comparison_sheet(title: str, rows: Sequence[Comparison], by: str, names: Mapping[str, str] | None = None) -> Sheet:
    """Two periods side by side (`reports.compare_periods`): the change in points, Newcombe's 95 %
    interval, and whether it excludes no change."""
    named = by in ("department", "lettering")
    columns = [Column(by, RATE_KEY_HEADINGS.get(by, by), "key")]
    if named:
        columns.append(Column(f"{by}_name", "이름"))
    if by == "day":
        columns.append(Column("before_day", "이전 일자"))
    columns += [
        Column("before_calls", "이전 발신", "count"),
        Column("before_answered", "이전 응답", "count"),
        Column("before_rate", "이전 응답률", "rate"),
        Column("after_calls", "이후 발신", "count"),
        Column("after_answered", "이후 응답", "count"),
        Column("after_rate", "이후 응답률", "rate"),
        Column("difference_points", "차이(%p)", "points"),
        Column("difference_low_points", "95% 하한(%p)", "points"),
        Column("difference_high_points", "95% 상한(%p)", "points"),
        Column("significant", "유의", "flag"),
    ]
    out: list[Sequence[Value]] = []
    for c in rows:
        head: list[Value] = [c.key]
        if named:
            head.append(_name(by, c.key, names or {}))
        if by == "day":
            head.append(c.before.key)
        b, a = c.before, c.after
        out.append(
            [
                *head,
                *(b.calls, b.answered, b.rate, a.calls, a.answered, a.rate),
                *(c.difference_points, c.low_points, c.high_points, c.significant),
            ]
        )
    return Sheet(title, columns, out)


def inbox_sheet(title: str, rows: Sequence[InboxRow], by: str, names: Mapping[str, str] | None = None) -> Sheet:
    """The duty/complaint report (`reports.inbox_report`); `names` maps queue ids to the names
    staff know them by (routing.yaml's queues: 당직실, 민원처리팀), shown beside the ids."""
    named = by == "queue" and names is not None
    columns = [Column(by, INBOX_KEY_HEADINGS.get(by, by), "key")]
    if named:
        columns.append(Column("queue_name", "이름"))
    columns += [
        Column("received", "접수", "count"),
        Column("auto_replied", "자동응답", "count"),
        Column("answered", "직원 답변", "count"),
        Column("answered_share", "답변율", "rate"),
        Column("closed", "종결", "count"),
        Column("first_response_median_s", "첫 답변(중앙값)", "seconds"),
        Column("first_response_p90_s", "첫 답변(90%)", "seconds"),
        Column("close_median_s", "종결까지(중앙값)", "seconds"),
        Column("after_hours_share", "근무시간 외", "rate"),
        Column("holiday_share", "휴일", "rate"),
    ]
    out: list[Sequence[Value]] = []
    for r in rows:
        head: list[Value] = [r.key]
        if named:
            head.append(_name(by, r.key, names or {}))
        out.append(
            [
                *head,
                *(r.received, r.auto_replied, r.answered, r.answered_share, r.closed),
                *(r.first_response_median_s, r.first_response_p90_s, r.close_median_s),
                *(r.after_hours_share, r.holiday_share),
            ]
        )
    return Sheet(title, columns, out)


# --- text table ---------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters (Hangul) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def duration(seconds: float) -> str:
    """Seconds as staff read them: '6.5', '42', '3:05', '2:03:05' (hours may exceed 24); under
    a minute with a tenth (a median of whole seconds may fall between two)."""
    if seconds < 59.95:
        return f"{seconds:.1f}".removesuffix(".0")
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    if minutes:
        return f"{minutes}:{secs:02d}"
    return str(secs)


def shown(value: Value, kind: Kind) -> str:
    if value is None:
        return ""
    if kind == "key":
        return KEY_NAMES.get(str(value), str(value))
    if kind == "flag":
        return "예" if value else ""
    if kind == "rate" and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if kind == "points" and isinstance(value, int | float):
        return f"{value:+.1f}"
    if kind == "seconds" and isinstance(value, int | float):
        return duration(float(value))
    return str(value)


def render_table(sheet: Sheet) -> str:
    """The title, then the aligned table (numbers right-aligned); ends with a newline."""
    cells = [[shown(v, c.kind) for v, c in zip(row, sheet.columns, strict=True)] for row in sheet.rows]
    headings = [c.heading for c in sheet.columns]
    widths = [max([display_width(h), *(display_width(r[i]) for r in cells)]) for i, h in enumerate(headings)]
    right = [c.kind not in ("text", "key") for c in sheet.columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(_pad(v, w, r) for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(r) for r in cells]
    return "\n".join([sheet.title, "", line(headings), rule, *body]) + "\n"


# --- CSV ------------------------------------------------------------------------------------


def _csv_value(value: Value, kind: Kind) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if kind == "rate" and isinstance(value, float):
        return f"{value:.4f}"
    if kind in ("points", "seconds") and isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render_csv(sheet: Sheet) -> str:
    """The CSV text (no BOM: `write_csv` adds it to files)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([c.name for c in sheet.columns])
    for row in sheet.rows:
        writer.writerow([_csv_value(v, c.kind) for v, c in zip(row, sheet.columns, strict=True)])
    return buffer.getvalue()


def write_csv(sheet: Sheet, path: Path) -> None:
    """A CSV file Excel opens with Hangul intact (UTF-8 with a byte order mark)."""
    path.write_text(render_csv(sheet), encoding="utf-8-sig", newline="")


# --- XLSX -----------------------------------------------------------------------------------

_XLSX_FORMATS: dict[Kind, str] = {
    "count": "#,##0",
    "rate": "0.0%",
    "points": "+0.0;-0.0;0.0",
    "seconds": "[h]:mm:ss",
}


def _sheet_title(title: str) -> str:
    # Excel: at most 31 characters, none of []:*?/\ .
    cleaned = "".join(" " if ch in "[]:*?/\\" else ch for ch in title)
    return cleaned[:31].strip() or "report"


def render_xlsx(sheet: Sheet, target: Path | IO[bytes]) -> None:
    """A workbook with one worksheet: the headings frozen in row 1, then the rows."""
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.styles import Font  # type: ignore[import-untyped]
    from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

    wb = Workbook()
    ws = wb.active
    ws.title = _sheet_title(sheet.title)
    wb.properties.title = sheet.title
    ws.append([c.heading for c in sheet.columns])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in sheet.rows:
        values: list[object] = []
        for value, column in zip(row, sheet.columns, strict=True):
            if column.kind == "seconds" and isinstance(value, int | float):
                values.append(timedelta(seconds=float(value)))
            elif column.kind in ("flag", "key"):
                values.append(shown(value, column.kind))
            else:
                values.append(value)
        ws.append(values)
    ws.freeze_panes = "A2"
    for index, column in enumerate(sheet.columns, start=1):
        number_format = _XLSX_FORMATS.get(column.kind)
        if number_format:
            for (cell,) in ws.iter_rows(min_row=2, min_col=index, max_col=index):
                cell.number_format = number_format
        widths = [display_width(column.heading), *(display_width(shown(r[index - 1], column.kind)) for r in sheet.rows)]
        ws.column_dimensions[get_column_letter(index)].width = min(60, max(widths) + 2)
    wb.save(target)
