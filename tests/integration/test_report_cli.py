"""`gateway report answer-rate|inbox` end to end: the CLI's main over a real records database,
in every format, and its refusals (bad dates, missing --out, an empty or old database)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import pytest
from openpyxl import load_workbook  # type: ignore[import-untyped]

from gateway.app.cli import main
from gateway.records.pdf import ReportFontMissing, find_font
from gateway.records.render import display_width
from gateway.records.store import RecordsStore
from tests.integration.test_reports import call_facts, loaded, run, thread_facts
from tests.support.records import migrated

NOV = ["--since", "2026-11-01", "--until", "2026-11-30"]


@pytest.fixture
def url(sqlite_records_url: str) -> str:
    return loaded(sqlite_records_url, [*call_facts(), *thread_facts()])


def report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_answer_rate_table(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(capsys, "answer-rate", "--records", url, *NOV)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "부서별 응답률 2026-11-01 ~ 2026-11-30"
    table = lines[2:]
    assert "민원여권과" in out and "복지정책과" in out and "합계" in out  # names from rules/directory.yaml
    assert "57.1%" in out and "66.7%" in out  # 4 of 7, 8 of 12
    # Aligned: every line as wide as the rule under the headings (Hangul counts two columns).
    assert {display_width(line) for line in table} == {display_width(table[1])}


def test_answer_rate_by_lettering_table(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(capsys, "answer-rate", "--records", url, *NOV, "--by", "lettering")
    assert code == 0
    assert "문자 표시됨" in out and "요청 안 함 (opted_out)" in out


def test_answer_rate_csv(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = report(capsys, "answer-rate", "--records", url, *NOV, "--format", "csv")
    assert code == 0
    assert not out.startswith("\ufeff")  # standard output: no BOM for scripts
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == [
        "department",
        "department_name",
        "calls",
        "answered",
        "answer_rate",
        "ci_low",
        "ci_high",
        "median_ring_s",
    ]
    got = {r["department"]: (int(r["calls"]), int(r["answered"]), r["answer_rate"], r["median_ring_s"]) for r in rows}
    assert got == {
        "civil-passport": (7, 4, "0.5714", "6.5"),
        "welfare-policy": (5, 4, "0.8000", "5.0"),
        "total": (12, 8, "0.6667", "5.5"),
    }
    assert rows[0]["department_name"] == "민원여권과"
    # A file: UTF-8 with a BOM (Excel), the same rows.
    target = tmp_path / "rates.csv"
    assert report(capsys, "answer-rate", "--records", url, *NOV, "--format", "csv", "--out", str(target))[0] == 0
    raw = target.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))) == rows


def test_answer_rate_compare_csv(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = report(
        capsys, "answer-rate", "--records", url, *NOV, "--compare", "2026-10-01..2026-10-31", "--format", "csv"
    )
    assert code == 0
    rows = {r["department"]: r for r in csv.DictReader(io.StringIO(out))}
    passport = rows["civil-passport"]
    assert (passport["before_calls"], passport["before_answered"], passport["after_calls"]) == ("2", "0", "7")
    assert passport["difference_points"] == "57.1"
    assert rows["welfare-policy"]["difference_points"] == ""  # no calls before: no comparison


def test_answer_rate_xlsx(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "rates.xlsx"
    code, out, _ = report(capsys, "answer-rate", "--records", url, *NOV, "--format", "xlsx", "--out", str(target))
    assert (code, out) == (0, "")
    ws = load_workbook(target).active
    assert ws.freeze_panes == "A2"
    header = [c.value for c in ws[1]]
    assert header[:5] == ["부서", "이름", "발신(휴대전화)", "응답", "응답률"]
    assert ws[1][0].font.b
    rows = [[c.value for c in row] for row in ws.iter_rows(min_row=2)]
    assert [r[:4] for r in rows] == [
        ["civil-passport", "민원여권과", 7, 4],
        ["welfare-policy", "복지정책과", 5, 4],
        ["합계", None, 12, 8],  # an empty cell
    ]
    assert rows[0][4] == pytest.approx(4 / 7)
    assert ws.cell(row=2, column=5).number_format == "0.0%"
    assert ws.column_dimensions["B"].width >= display_width("복지정책과")


def test_inbox_table_csv_xlsx(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = report(capsys, "inbox", "--records", url, *NOV)
    assert code == 0
    assert "당직·민원 문자 처리 현황" in out and "15:00" in out  # duty's median first response, 900 s
    code, out, _ = report(capsys, "inbox", "--records", url, *NOV, "--by", "tag", "--format", "csv")
    assert code == 0
    rows = {r["tag"]: r for r in csv.DictReader(io.StringIO(out))}
    assert {k: r["received"] for k, r in rows.items()} == {
        "-": "1",
        "noise": "2",
        "parking": "1",
        "pothole": "1",
        "total": "4",
    }
    assert rows["total"]["first_response_p90_s"] == "1080.0"
    target = tmp_path / "inbox.xlsx"
    assert report(capsys, "inbox", "--records", url, *NOV, "--format", "xlsx", "--out", str(target))[0] == 0
    ws = load_workbook(target).active
    assert [c.value for c in ws[1]][:5] == ["대기열", "이름", "접수", "자동응답", "직원 답변"]
    # The queues' names from routing.yaml beside their ids, as staff know them.
    assert {ws.cell(row=r, column=1).value: ws.cell(row=r, column=2).value for r in (2, 3)} == {
        "complaint": "민원처리팀",
        "duty": "당직실",
    }
    assert ws.cell(row=2, column=8).number_format == "[h]:mm:ss"


def test_inbox_pdf(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "inbox.pdf"
    code, out, err = report(capsys, "inbox", "--records", url, *NOV, "--format", "pdf", "--out", str(target))
    assert (code, out) == (0, ""), err
    assert target.read_bytes().startswith(b"%PDF")
    pdftoppm = shutil.which("pdftoppm")
    assert pdftoppm, "poppler-utils (pdftoppm) is needed: ops/bootstrap.sh installs it"
    subprocess.run(
        [pdftoppm, "-png", "-r", "60", "-f", "1", "-l", "1", str(target), str(tmp_path / "page")], check=True
    )
    png = next(tmp_path.glob("page*.png"))
    assert png.read_bytes().startswith(b"\x89PNG")
    pdftotext = shutil.which("pdftotext")
    if pdftotext:  # the title's Hangul is real text in the PDF (the font is embedded, mapped)
        text = subprocess.run([pdftotext, "-l", "1", str(target), "-"], capture_output=True, text=True, check=True)
        assert "당직·민원 문자 처리 현황 2026년 11월" in text.stdout


def test_bad_arguments_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["answer-rate", "--since", "2026-13-01", "--until", "2026-11-30"], "--since '2026-13-01' is not a date"),
        (["answer-rate", "--since", "2026-11-30", "--until", "2026-11-01"], "is after"),
        (["answer-rate", *NOV, "--format", "xlsx"], "give --out"),
        (["answer-rate", *NOV, "--compare", "2026-10-01"], "YYYY-MM-DD..YYYY-MM-DD"),
        (["inbox", *NOV, "--format", "pdf"], "give --out"),
    ]
    for argv, message in cases:
        code, _, err = report(capsys, argv[0], "--records", url, *argv[1:])
        assert (code, message in err) == (2, True), (argv, err)


def test_nothing_to_report_exit_1(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = report(capsys, "answer-rate", "--records", url, "--since", "2025-01-01", "--until", "2025-01-31")
    assert code == 1 and "no outbound calls" in err
    code, _, err = report(capsys, "inbox", "--records", url, "--since", "2025-01-01", "--until", "2025-01-31")
    assert code == 1 and "no citizens' messages" in err
    missing = tmp_path / "nothing.sqlite3"
    code, _, err = report(capsys, "answer-rate", "--records", f"sqlite:///{missing}", *NOV)
    assert code == 1 and "no records database" in err
    assert not missing.exists()  # the report did not create it


def test_empty_or_old_database_exit_1(empty_records_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    if empty_records_url.startswith("sqlite"):
        Path(empty_records_url.removeprefix("sqlite:///")).touch()
    code, _, err = report(capsys, "answer-rate", "--records", empty_records_url, *NOV)
    assert code == 1 and "is empty" in err

    async def first_revision(store: RecordsStore) -> None:
        await store.migrate_to("0001")

    run(empty_records_url, first_revision)
    code, _, err = report(capsys, "inbox", "--records", empty_records_url, *NOV)
    assert code == 1 and "gateway records migrate" in err
    migrated(empty_records_url)
    assert report(capsys, "inbox", "--records", empty_records_url, *NOV)[0] == 1  # current, but nothing in it


def test_missing_font_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReportFontMissing, match="fonts-nanum"):
        find_font("NoSuchFamilyAnywhere", known=tmp_path / "absent.ttf")
    assert find_font().name.startswith("NanumGothic")
