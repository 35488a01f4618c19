"""The telecom team's status page over real HTTP: a real Gateway (real Redis, a SQLite records
store) gives the /health document, the accounts, sessions and access records; the console app
serves /status, its live fragment and the report downloads on a loopback TCP listener.

Checked: what a telecom account sees (PBX links, Redis, rules, queues, providers, the last
decisions with masked numbers, the answer-rate chart from the roll-ups); a staff account is
refused with a 403 page and a DENIED access record; each download is a valid file (openpyxl
opens the xlsx, the PDF starts with %PDF, the CSV has the report's columns) and leaves a REPORT
access record naming the report and its period.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.sandbox_messaging import SandboxAlimtalk, SandboxSms
from gateway.app.gateway import Gateway, Overrides
from gateway.console import status
from gateway.console.app import SESSION_COOKIE, ConsoleDeps, make_console_app
from gateway.domain.audit import Action
from gateway.domain.numbers import NumberPlan
from gateway.domain.records import SEOUL, CallFact
from gateway.domain.routing import InboundSms
from gateway.domain.staff import Account
from gateway.infra.config import ConsoleConfig, load_config
from gateway.infra.recent import RecentDecisions, Tee
from tests.conftest import RULES
from tests.integration.test_intake import ENV, Collect
from tests.integration.test_reports import call, thread_facts

CITY = "+82319002000"
CITIZEN = "+821012345678"
PASSWORD = "Status-page-2026!"


@dataclass
class Site:
    gateway: Gateway
    recent: RecentDecisions
    http: TestClient[Any, Any]
    telecom: Account
    staff: Account
    deps: ConsoleDeps

    async def signed_in_as(self, account: Account) -> None:
        session = await self.gateway.sessions.create(account.id, ip="127.0.0.1")
        self.http.session.cookie_jar.clear()
        self.http.session.cookie_jar.update_cookies({SESSION_COOKIE: session.id})


def recent_days(n: int) -> list[str]:
    today = datetime.now(SEOUL).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(n)]


def chart_calls() -> list[CallFact]:
    """Yesterday: 4 calls with the lettering shown (3 answered), 2 without (0 answered)."""
    day = recent_days(2)[1]
    return [
        call(day, "civil-passport", "delivered", 3),
        call(day, "civil-passport", "delivered", 5),
        call(day, "civil-passport", "delivered", 8),
        call(day, "civil-passport", "delivered", None),
        call(day, "civil-passport", "not_subscribed", None),
        call(day, "civil-passport", "skipped", None, reason="opted_out"),
    ]


@pytest.fixture
async def site(monkeypatch: pytest.MonkeyPatch, redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    env = {**ENV, "REDIS_URL": redis_url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    recent = RecentDecisions(size=50)
    over = Overrides(
        redis_url=redis_url,
        rules_dir=RULES,
        queue_namespace="t-status",
        alimtalk={"sandbox-alimtalk": SandboxAlimtalk("sandbox-alimtalk")},
        sms={"sandbox-sms": SandboxSms("sandbox-sms")},
        records_url=sqlite_records_url,
    )
    gw = Gateway(load_config(), Tee(Collect(), recent), environ=env, overrides=over)
    directory = gw.staff_directory
    telecom, _ = await directory.add("test", "tel.kim", "김통신", "telecom", password=PASSWORD)
    staff, _ = await directory.add("test", "staff.lee", "이담당", "staff", queues="duty", password=PASSWORD)
    await gw.staff_store.write([*chart_calls(), *thread_facts()])
    deps = ConsoleDeps(
        config=ConsoleConfig(),
        intake=gw.intake,
        directory=directory,
        access=gw.access_log,
        sessions=gw.sessions,
        plan=NumberPlan(),
        health=gw.health,
        extras={
            "recent": recent,
            "records_store": gw.staff_store,
            "queue_names": lambda: {"duty": "당직실", "complaint": "민원처리팀"},
            "department_names": lambda: {"civil-passport": "민원여권과"},
        },
    )
    # Only the status page's routes: this test does not depend on the other pages' modules.
    app = make_console_app(deps, routes=status.add_routes)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Site(gw, recent, client, telecom, staff, deps)
    finally:
        await client.close()
        await gw.stop()


async def access_records(site: Site, action: str) -> list[Any]:
    return list(await site.gateway.access_log.list(action=action))


async def test_telecom_sees_every_part_and_the_last_decisions(site: Site) -> None:
    gw = site.gateway
    accepted = await gw.intake.accept(InboundSms("m-status-1", "sandbox-sms", CITY, CITIZEN, "가로등이 꺼졌어요", 0.0))
    # A lettering and a skip, as the call pipeline reports them (through the same sink).
    gw.sink.decision(
        {
            "event": "lettering",
            "pbx": "city-hall",
            "call": "1763.42",
            "extension": "2001",
            "to": CITIZEN,
            "provider": "sandbox",
            "organisation": "한빛시청",
            "department": "민원여권과",
            "text": "[한빛시청] 민원여권과",
            "result": "delivered",
            "detail": "",
        }
    )
    gw.sink.decision({"event": "skipped", "pbx": "city-hall", "call": "1763.43", "reason": "landline"})
    await site.signed_in_as(site.telecom)

    response = await site.http.get("/status")
    assert response.status == 200
    page = await response.text()
    assert "Content-Security-Policy" in response.headers and "style=" not in page
    for heading in (
        "교환기(PBX) 연결",
        "Redis",
        "규칙 파일",
        "작업 대기열",
        "발송 사업자",
        "기록 저장",
        "최근 처리 내역",
    ):
        assert heading in page, heading
    # The PBX is not connected in this test: the link is red, and so is the summary.
    assert "city-hall" in page and "끊김" in page and "점검 필요" in page
    assert re.search(r'class="status-part state-bad" aria-label="교환기\(PBX\) 연결"', page)
    assert re.search(r'class="status-part state-ok" aria-label="Redis"', page)
    assert gw.rules.status()["version"] in page and gw.rules.console.version in page
    # Decisions: newest first, numbers masked, never in full.
    assert "010-****-5678" in page and "12345678" not in page and "1012345678" not in page
    names = {"duty": "당직실", "complaint": "민원처리팀"}
    assert page.index("생략: 유선 전화") < page.index("문자 표시됨") < page.index(f"{accepted.queue}")
    assert (
        f"대기열 {names[accepted.queue]}({accepted.queue}) (규칙 " in page
        and "<td>문자 수신</td>" in page
        and "<td>접수</td>" in page
    )
    # Dead letters per queue from Redis.
    assert "실패 보관함" in page

    fragment = await site.http.get("/status/fragment", headers={"HX-Request": "true"})
    assert fragment.status == 200
    body = await fragment.text()
    assert body.lstrip().startswith('<div id="status-live"') and 'hx-trigger="every 10s"' in body
    assert "<html" not in body and "010-****-5678" in body


async def test_the_chart_shows_the_roll_ups_of_the_last_30_days(site: Site) -> None:
    await site.signed_in_as(site.telecom)
    page = await (await site.http.get("/status")).text()
    svg = page[page.index("<svg") : page.index("</svg>")]
    # A pair of bars per day, and the legend's two swatches.
    assert len(re.findall(r'class="bar with[ "]', svg)) == 30 + 1
    assert len(re.findall(r'class="bar without[ "]', svg)) == 30 + 1
    yesterday = recent_days(2)[1]
    # 3 of 4 answered with the lettering (Wilson 95 %: 30.1 %..95.4 %); 0 of 2 without.
    assert f"{yesterday} 문자 표시됨 3/4 (75.0%, 95% 30.1%~95.4%)" in svg
    assert f"{yesterday} 문자 표시 안 됨 0/2 (0.0%, 95% 0.0%~65.8%)" in svg
    assert svg.count('class="whisker"') == 2  # the only day with calls: one whisker per bar
    assert "30일 합계: 문자 표시됨 3/4" in page
    assert "style=" not in svg


async def test_staff_are_refused_and_the_attempt_is_recorded(site: Site) -> None:
    await site.signed_in_as(site.staff)
    for path in ("/status", "/status/fragment", "/reports/answer-rate?format=csv", "/reports/inbox?month=2026-11"):
        response = await site.http.get(path, allow_redirects=False)
        assert response.status == 403, path
        assert "통신팀과 관리자만" in await response.text()
    denied = await access_records(site, Action.DENIED)
    assert [(r.entry.account, r.entry.target, r.entry.result) for r in reversed(denied)] == [
        ("staff.lee", "/status", "denied"),
        ("staff.lee", "/status/fragment", "denied"),
        ("staff.lee", "/reports/answer-rate", "denied"),
        ("staff.lee", "/reports/inbox", "denied"),
    ]
    assert await access_records(site, Action.REPORT) == []
    # Nobody signed in: to the sign-in page, nothing shown.
    site.http.session.cookie_jar.clear()
    response = await site.http.get("/status", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/login")


async def test_downloads_are_valid_files_and_recorded(site: Site) -> None:
    from openpyxl import load_workbook  # type: ignore[import-untyped]

    await site.signed_in_as(site.telecom)
    since, until = recent_days(30)[-1], recent_days(1)[0]

    xlsx = await site.http.get(f"/reports/answer-rate?since={since}&until={until}&by=lettering&format=xlsx")
    assert xlsx.status == 200 and "attachment" in xlsx.headers["Content-Disposition"]
    book = load_workbook(io.BytesIO(await xlsx.read()))
    rows = list(book.active.iter_rows(values_only=True))
    assert rows[0][0] == "문자 결과" and rows[-1][0] == "합계" and rows[-1][2] == 6 and rows[-1][3] == 3

    response = await site.http.get(f"/reports/answer-rate?since={since}&until={until}&by=department&format=csv")
    assert response.status == 200 and response.content_type == "text/csv"
    text = (await response.read()).decode("utf-8")
    assert text.startswith("\ufeff")
    table = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert table[0]["department"] == "civil-passport" and table[0]["department_name"] == "민원여권과"
    assert table[0]["calls"] == "6" and table[0]["answered"] == "3"

    inbox = await site.http.get("/reports/inbox?month=2026-11&by=queue&format=xlsx")
    assert inbox.status == 200
    rows = list(load_workbook(io.BytesIO(await inbox.read())).active.iter_rows(values_only=True))
    assert rows[-1][0] == "합계" and 4 in rows[-1]  # four messages received in November

    pdf = await site.http.get("/reports/inbox?month=2026-11&by=queue&format=pdf")
    assert pdf.status == 200 and pdf.content_type == "application/pdf"
    assert (await pdf.read()).startswith(b"%PDF")

    reports = await access_records(site, Action.REPORT)
    assert [(r.entry.account, r.entry.detail) for r in reversed(reports)] == [
        ("tel.kim", f"answer-rate by lettering {since}~{until} xlsx"),
        ("tel.kim", f"answer-rate by department {since}~{until} csv"),
        ("tel.kim", "inbox by queue 2026-11 xlsx"),
        ("tel.kim", "inbox by queue 2026-11 pdf"),
    ]


async def test_bad_report_requests_get_a_korean_error_and_no_record(site: Site) -> None:
    await site.signed_in_as(site.telecom)
    for path, fragment in (
        ("/reports/answer-rate?since=2026-13-01", "YYYY-MM-DD"),
        ("/reports/answer-rate?since=2026-11-30&until=2026-11-01", "시작 날짜가 끝 날짜보다 늦습니다"),
        ("/reports/answer-rate?by=weekday", "고를 수 없는 값"),
        ("/reports/inbox?month=2026-13", "YYYY-MM"),
        ("/reports/inbox?month=2026-11&format=docx", "고를 수 없는 값"),
    ):
        response = await site.http.get(path)
        assert response.status == 400, path
        assert fragment in await response.text(), path
    assert await access_records(site, Action.REPORT) == []


async def test_without_a_records_store_the_page_says_so(site: Site) -> None:
    del site.deps.extras["records_store"]
    await site.signed_in_as(site.telecom)
    page = await (await site.http.get("/status")).text()
    assert "기록 저장소가 설정되지 않아" in page and "<svg" not in page and "/reports/inbox" not in page
    response = await site.http.get("/reports/inbox?month=2026-11")
    assert response.status == 404 and "기록 저장소가 설정되지 않아" in await response.text()
