"""Report rendering that needs no database: widths of Hangul, durations, CSV, the PDF's title
and chart."""

from __future__ import annotations

import csv
import io
from datetime import date

from gateway.domain.analytics import RateRow
from gateway.records.pdf import bar_chart, period_title
from gateway.records.render import Column, Sheet, display_width, duration, rate_sheet, render_csv, render_table
from gateway.records.reports import InboxRow


def test_display_width_counts_hangul_twice() -> None:
    assert display_width("abc") == 3
    assert display_width("민원여권과") == 10
    assert display_width("A4 용지") == 7


def test_duration() -> None:
    assert [duration(s) for s in (0, 6.5, 42.0, 59.99, 185, 7385, 90000)] == [
        "0",
        "6.5",
        "42",
        "1:00",
        "3:05",
        "2:03:05",
        "25:00:00",
    ]


def test_table_aligns_mixed_scripts() -> None:
    rows = [RateRow.of("civil-passport", 7, 4, 6.5), RateRow.of("tax", 10, 10, 3), RateRow.of("total", 17, 14, 4)]
    text = render_table(
        rate_sheet("부서별 응답률", rows, "department", {"civil-passport": "민원여권과", "tax": "세무과"})
    )
    lines = text.splitlines()
    assert lines[0] == "부서별 응답률"
    body = lines[2:]
    assert len({display_width(line) for line in body}) == 1  # every line ends at the same column
    # The count column's right edge is the same in every line (numbers right-aligned).
    assert body[2].index("민원여권과") == body[3].index("세무과")
    assert "합계" in body[-1] and "100.0%" in body[3]


def test_csv_quotes_and_leaves_blanks() -> None:
    sheet = Sheet(
        "t",
        [Column("rule", "규칙", "key"), Column("received", "접수", "count"), Column("share", "비율", "rate")],
        [["night, weekend", 3, None], ["total", 3, 0.5]],
    )
    rows = list(csv.reader(io.StringIO(render_csv(sheet))))
    assert rows == [["rule", "received", "share"], ["night, weekend", "3", ""], ["total", "3", "0.5000"]]


def test_period_title() -> None:
    assert period_title(date(2026, 11, 1), date(2026, 11, 30)) == "2026년 11월"
    assert period_title(date(2026, 12, 1), date(2026, 12, 31)) == "2026년 12월"
    assert period_title(date(2027, 2, 1), date(2027, 2, 28)) == "2027년 2월"
    assert period_title(date(2026, 11, 1), date(2026, 11, 29)) == "2026-11-01 ~ 2026-11-29"
    assert period_title(date(2026, 10, 1), date(2026, 11, 30)) == "2026-10-01 ~ 2026-11-30"


def test_bar_chart_is_svg_with_a_bar_per_figure() -> None:
    rows = [
        InboxRow("duty", 120, 100, 95, 90, 1.0, 2.0, 3.0, 0.5, 0.1),
        InboxRow("<script>", 10, 1, 2, 0, None, None, None, 0.0, 0.0),
        InboxRow("total", 130, 101, 97, 90, 1.0, 2.0, 3.0, 0.5, 0.1),
    ]
    svg = bar_chart(rows, "queue")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('fill="#4a78b5"') == 2 + 1  # received: one bar per group (not the total), and the legend
    assert "<script>" not in svg and "&lt;script&gt;" in svg
