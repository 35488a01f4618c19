"""The monthly duty/complaint report as a PDF (the paper trail), with WeasyPrint.

HTML with an inline SVG bar chart becomes an A4 PDF. Nothing is fetched from a network (city
networks are separated): the only resource is the Korean font, a local file from Debian's
fonts-nanum (NanumGothic), found with `fc-match` or at its known path. Without it Hangul would
print as empty boxes, so the report fails with a message that names the package instead.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

from gateway.domain.records import SEOUL
from gateway.errors import GatewayError
from gateway.records.render import INBOX_KEY_HEADINGS, Sheet, shown
from gateway.records.reports import TOTAL, InboxRow

KNOWN_FONT = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")
KNOWN_BOLD = Path("/usr/share/fonts/truetype/nanum/NanumGothicBold.ttf")


class ReportFontMissing(GatewayError):
    """The Korean font for the PDF is not installed."""


def find_font(family: str = "NanumGothic", known: Path = KNOWN_FONT) -> Path:
    """The font file of `family`: fontconfig's answer when it really is that family (fc-match
    falls back to any font rather than fail), else the Debian path; else ReportFontMissing."""
    fc_match = shutil.which("fc-match")
    if fc_match:
        try:
            found = subprocess.run(
                [fc_match, "-f", "%{file}", family], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found and Path(found).name.lower().startswith(family.lower()) and Path(found).is_file():
            return Path(found)
    if known.is_file():
        return known
    raise ReportFontMissing(
        f"the PDF report needs the Korean font {family} ({known}): install Debian's fonts-nanum "
        "(apt-get install fonts-nanum) or choose --format xlsx"
    )


def period_title(since: date, until: date) -> str:
    """'2026년 11월' for a whole calendar month, else '2026-11-03 ~ 2026-11-20'."""
    next_month = date(until.year + until.month // 12, until.month % 12 + 1, 1)
    whole_month = since.day == 1 and since.replace(day=1) == until.replace(day=1) and (until - next_month).days == -1
    if whole_month:
        return f"{since.year}년 {since.month}월"
    return f"{since.isoformat()} ~ {until.isoformat()}"


def bar_chart(rows: Sequence[InboxRow], by: str, width: int = 680, height: int = 260) -> str:
    """An SVG chart: per group, messages received and answered by staff, side by side."""
    groups = [r for r in rows if r.key != TOTAL][:40]
    left, right, top, bottom = 44, 12, 28, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([r.received for r in groups] + [1])
    step = _nice_step(peak)
    scale_max = step * -(-peak // step)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="NanumGothic" font-size="10">'
    ]
    for tick in range(0, scale_max + 1, step):
        y = top + plot_h - plot_h * tick / scale_max
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#444">{tick}</text>')
    slot = plot_w / max(1, len(groups))
    bar = max(2.0, min(24.0, slot * 0.38))
    for i, r in enumerate(groups):
        x = left + slot * i + slot / 2
        for offset, value, colour in ((-bar, r.received, "#4a78b5"), (0.0, r.answered, "#e08a2c")):
            h = plot_h * value / scale_max
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"/>'
            )
        label = html.escape(r.key if by != "day" else r.key[5:])
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 12}" text-anchor="end" fill="#222" '
            f'transform="rotate(-35 {x:.1f} {top + plot_h + 12})">{label}</text>'
        )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#444"/>')
    legend_y = 14
    for i, (text, colour) in enumerate((("접수", "#4a78b5"), ("직원 답변", "#e08a2c"))):
        lx = left + i * 90
        parts.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{legend_y}" fill="#222">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(peak: int) -> int:
    """A round tick step giving at most about five grid lines."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        if peak / step <= 5:
            return step
    return int(10 ** len(str(peak // 5)))


def _table(sheet: Sheet) -> str:
    head = "".join(f"<th>{html.escape(c.heading)}</th>" for c in sheet.columns)
    body = []
    for row in sheet.rows:
        cells = "".join(
            f'<td class="{"t" if c.kind in ("text", "key") else "n"}">{html.escape(shown(v, c.kind))}</td>'
            for v, c in zip(row, sheet.columns, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def inbox_html(
    sheet: Sheet, rows: Sequence[InboxRow], *, by: str, since: date, until: date, generated: datetime, font: Path
) -> str:
    """The report's HTML (kept separate from the PDF so a test can read what is printed)."""
    title = f"당직·민원 문자 처리 현황 {period_title(since, until)}"
    bold = KNOWN_BOLD if KNOWN_BOLD.is_file() else font
    stamp = generated.astimezone(SEOUL).strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
@font-face {{ font-family: "ReportKorean"; src: url("{font.as_uri()}"); font-weight: normal; }}
@font-face {{ font-family: "ReportKorean"; src: url("{bold.as_uri()}"); font-weight: bold; }}
@page {{ size: A4; margin: 18mm 14mm 20mm 14mm;
  @bottom-left {{ content: "생성 {stamp} (Asia/Seoul) · 민원 문자 게이트웨이"; font-family: "ReportKorean";
                  font-size: 8pt; color: #555; }}
  @bottom-right {{ content: counter(page) " / " counter(pages); font-family: "ReportKorean";
                   font-size: 8pt; color: #555; }} }}
body {{ font-family: "ReportKorean"; font-size: 9pt; color: #111; }}
h1 {{ font-size: 16pt; margin: 0 0 2mm 0; }}
p.sub {{ margin: 0 0 5mm 0; color: #444; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 5mm; }}
th, td {{ border: 0.5pt solid #999; padding: 1.2mm 1.5mm; }}
th {{ background: #eef2f7; font-weight: bold; font-size: 8pt; }}
td.n {{ text-align: right; }}
td.t {{ white-space: nowrap; }}
tr:last-child td {{ font-weight: bold; background: #f6f6f6; }}
svg text {{ font-family: "ReportKorean"; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="sub">기간 {since.isoformat()} ~ {until.isoformat()} · {html.escape(INBOX_KEY_HEADINGS.get(by, by))}별 ·
시간은 접수부터 (시:분:초, 분:초)</p>
{bar_chart(rows, by)}
{_table(sheet)}
</body></html>
"""


def inbox_pdf(
    sheet: Sheet, rows: Sequence[InboxRow], *, by: str, since: date, until: date, generated: datetime | None = None
) -> bytes:
    """The A4 PDF of an inbox report (`render.inbox_sheet` of `reports.inbox_report`'s rows)."""
    font = find_font()
    from weasyprint import HTML  # type: ignore[import-untyped]
    from weasyprint.urls import URLFetcher  # type: ignore[import-untyped]

    page = inbox_html(
        sheet, rows, by=by, since=since, until=until, generated=generated or datetime.now(SEOUL), font=font
    )
    # The font files only: no network (separated city networks), and a font that fails to load
    # stops the report rather than print boxes.
    fetcher = URLFetcher(allowed_protocols={"file"}, fail_on_errors=True)
    pdf: bytes = HTML(string=page, url_fetcher=fetcher).write_pdf()
    return pdf
