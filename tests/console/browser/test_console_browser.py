"""The staff console in a real browser (Debian's chromium, driven by Playwright), against the real
`gateway run` and `gateway worker` processes of tests/support/console_stack.py.

What a duty officer does on a shift, step by step, each step's access record (접속기록) checked
afterwards with `gateway audit list`, and the chains with `gateway audit verify`:

* sign in; a citizen's text posted to the webhook while the inbox is open appears in it without
  a reload; open the thread; claim it; answer it, the byte counter flipping from SMS to LMS at
  exactly 90 EUC-KR bytes; the answer is queued through the outbox guard and reaches the SMS
  provider; an answer to a citizen who opted out is refused in Korean and nothing is queued;
  sign out;
* a person without rights to the queue cannot open the thread (403), and the attempt is recorded;
* five wrong passwords lock the account, and then the right one is refused too;
* at phone width the inbox and a thread fit without horizontal scrolling;
* no request leaves 127.0.0.1 (the guard of conftest.py), and every page has its CSP.

Screenshots of the inbox, a thread, the status page and the phone view go to the test's tmp
dir, or to $GATEWAY_SCREENSHOTS (ops/screenshots.py writes docs/ with it).
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, Response, expect

from gateway.domain.audit import ACTION_LABELS
from tests.console.browser.conftest import PHONE, NewContext, OutsideGuard
from tests.support.console_stack import DUTY_NUMBER, ConsoleStack, received_for

pytestmark = pytest.mark.slow

STREETLIGHT = "가로등이 고장났어요. 한빛로 12 앞입니다"
# 45 Hangul syllables are 90 EUC-KR bytes, the most one SMS holds; one more character makes an LMS.
FULL_SMS = "한빛시청민원처리팀입니다" * 3 + "가로등을고쳤습니다"  # 36 + 9 = 45 syllables
# The answer sent: 90 bytes too (Hangul 2 bytes each, spaces and dots 1).
ANSWER = "가로등은 내일 오전까지 고치겠습니다. 알려 주셔서 정말 감사합니다. 한빛시청 민원처리팀 드림"
assert len(FULL_SMS) == 45 and len(FULL_SMS.encode("euc-kr")) == 90 and len(ANSWER.encode("euc-kr")) == 90
# Citizens' texts already in the complaint queue when the shift starts: (minutes ago, text).
EARLIER = (
    (95, "한빛공원 앞 도로에 포트홀이 생겨서 차가 덜컹거립니다"),
    (40, "어제 신고한 불법 현수막 처리됐는지 궁금합니다"),
    (12, "여권 재발급은 시청 몇 층에서 하나요?"),
    (5, "한빛로 12 앞 가로등이 고장났어요"),
)


@dataclass(frozen=True)
class Person:
    username: str
    name: str
    role: str
    queues: tuple[str, ...]
    password: str


ALICE = Person("alice", "김민원", "staff", ("complaint",), "Hanbit-river-7731")
BOB = Person("bob", "박당직", "staff", ("duty",), "Hanbit-night-4420")
CAROL = Person("carol", "최잠금", "staff", ("complaint",), "Hanbit-lock-9015")
DAVE = Person("dave", "정모바일", "staff", ("complaint", "duty"), "Hanbit-phone-3388")
ERIN = Person("erin", "한통신", "telecom", ("duty", "complaint"), "Hanbit-telecom-6142")
PEOPLE = (ALICE, BOB, CAROL, DAVE, ERIN)


@pytest.fixture(scope="module")
def people(stack: ConsoleStack) -> Iterator[tuple[Person, ...]]:
    """The accounts, made with the real CLI (`gateway staff add`)."""
    for p in PEOPLE:
        stack.add_account(p.username, p.name, p.role, p.queues, p.password)
    yield PEOPLE


# ------------------------------------------------------------------ steps


def log_in(page: Page, stack: ConsoleStack, person: Person) -> Response | None:
    """Sign in on /login; returns the answer to the form's post."""
    page.goto(f"{stack.console_url}/login")
    page.fill("input[name=username]", person.username)
    page.fill("input[name=password]", person.password)
    with page.expect_navigation() as nav:
        page.click('form[action="/login"] button[type=submit]')
    return nav.value


def signed_in(page: Page, stack: ConsoleStack, person: Person) -> None:
    log_in(page, stack, person)
    expect(page.locator("header .who")).to_contain_text(person.username)


def claim(page: Page) -> None:
    page.click('#thread-side form[action$="/claim"] button[type=submit]')


def expect_counter(counter: Locator, kind: str, size: int) -> None:
    expect(counter).to_have_attribute("data-bytes", str(size))
    expect(counter).to_have_attribute("data-kind", kind)


def no_horizontal_scroll(page: Page) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"{page.url}: the page is {width}px wide in a {inner}px window"


@dataclass(frozen=True)
class Row:
    """One line of `gateway audit list`."""

    at: str
    account: str
    ip: str
    action: str  # the Action's value, from the Korean label shown
    result: str
    what: tuple[str, ...]  # subject, target, detail (ids only)


def audit_rows(stack: ConsoleStack) -> list[Row]:
    """Every access record, as `gateway audit list` prints them (a fixed-width table; the
    columns found from its header)."""
    lines = stack.audit_list("--limit", "100000").splitlines()
    header = lines[0]
    starts = [header.index(name) for name in ("account", "ip", "action", "result", "subject")]
    actions = {label: action for action, label in ACTION_LABELS.items()}
    rows = []
    for line in lines[1:]:
        if re.fullmatch(r"\d+ record\(s\)", line.strip()):
            break
        at = line[: starts[0]].strip()
        account, ip, label, result = (line[a:b].strip() for a, b in itertools.pairwise(starts))
        rows.append(Row(at, account, ip, actions.get(label, label), result, tuple(line[starts[4] :].split())))
    assert lines[-1].strip() == f"{len(rows)} record(s)", lines[-3:]
    return rows


def has_record(rows: list[Row], account: str, action: str, *, result: str = "ok", about: str = "") -> bool:
    """A record of `account` doing `action` with `result`, about (subject, target or detail) `about`."""
    return any(
        r.account == account and r.action == action and r.result == result and (not about or about in r.what)
        for r in rows
    )


def audit_clean(stack: ConsoleStack) -> None:
    """`gateway audit verify` exits 0, both chains intact."""
    verified = stack.audit_verify()
    assert verified.code == 0, f"gateway audit verify exited {verified.code}:\n{verified.out}\n{verified.err}"
    assert "access:" in verified.out and "accounts:" in verified.out, verified.out


def mobile(i: int) -> tuple[str, str]:
    """(as the provider writes it, E.164) of a test citizen."""
    return f"010-7{i:03d}-{i:04d}", f"+82107{i:03d}{i:04d}"


# ------------------------------------------------------------------ tests


def test_login_page_is_korean_with_its_csp(stack: ConsoleStack, new_context: NewContext, guard: OutsideGuard) -> None:
    page = new_context().new_page()
    response = page.goto(f"{stack.console_url}/login")
    assert response is not None and response.status == 200
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp, csp
    assert page.locator("html").get_attribute("lang") == "ko"
    expect(page.locator('form[action="/login"] button[type=submit]')).to_have_text("로그인")
    # The page's own script and style came from the console itself.
    assert any(u.endswith("/static/console.css") for u in guard.seen), guard.seen


def test_the_guard_refuses_and_reports_an_outside_url(browser: Browser) -> None:
    """The guard itself can fail a test: a page that asks for an outside image is caught."""
    guard = OutsideGuard()
    context = browser.new_context()
    try:
        guard.attach(context)
        page = context.new_page()
        # TEST-NET-1 (RFC 5737): never routed, and the guard refuses it before any connection.
        with page.expect_event("requestfailed", lambda r: "192.0.2.1" in r.url):
            page.set_content('<img src="http://192.0.2.1/logo.png" alt="">')
    finally:
        context.close()
    assert guard.outside == ["http://192.0.2.1/logo.png"]
    with pytest.raises(AssertionError, match=r"left 127\.0\.0\.1"):
        guard.check()


def test_a_shift_in_the_inbox(
    stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext, guard: OutsideGuard, shots: Path
) -> None:
    at = received_for("complaint", STREETLIGHT)
    threads = [
        stack.citizen_sms(mobile(10 + i)[0], text, at=received_for("complaint", text, before=at - 60 * ago))
        for i, (ago, text) in enumerate(EARLIER)
    ]
    assert {t["queue"] for t in threads} == {"complaint"}, threads
    first = threads[-1]

    page = new_context().new_page()
    response = log_in(page, stack, ALICE)
    assert response is not None and "content-security-policy" in response.headers
    expect(page.locator("header .who")).to_contain_text("alice")
    expect(page.locator(f'li.thread[data-thread="{first["thread"]}"]')).to_be_visible()

    # A citizen texts while the inbox is open: the row appears without a reload.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    page.evaluate("window.__stillTheSamePage = true")
    citizen, citizen_e164 = mobile(2)
    live = stack.citizen_sms(citizen, "한빛로 20 가로등이 밤새 깜빡거립니다", at=at)
    assert live["queue"] == "complaint", live
    row = page.locator(f'li.thread[data-thread="{live["thread"]}"]')
    expect(row).to_be_visible()
    assert page.evaluate("window.__stillTheSamePage === true"), "the page was reloaded"
    assert navigations == [], navigations
    # Told by the server over one event stream, not found by polling: a list reload or two.
    assert 1 <= sum(urlsplit(u).path == "/events" for u in guard.seen) <= 2, guard.seen
    assert sum(urlsplit(u).path == "/inbox/list" for u in guard.seen) <= 3, guard.seen
    assert citizen_e164[3:] not in page.content() and "010-7002-0002" not in page.content()  # masked
    page.screenshot(path=str(shots / "console-inbox.png"))

    # The thread: the citizen's text, the number masked.
    row.locator("a.thread-link").click()
    page.wait_for_url(re.compile(rf"/threads/{live['thread']}$"))
    expect(page.locator("#conversation")).to_contain_text("밤새 깜빡거립니다")
    assert "7002-0002" not in page.content()

    # Claim it.
    claim(page)
    expect(page.locator("#thread-side")).to_contain_text(f"{ALICE.name} (나)")

    # Answer: the counter flips from SMS to LMS at exactly 90 EUC-KR bytes.
    answer_box = page.locator("textarea[name=text]#answer-text")
    counter = page.locator("#byte-counter")
    answer_box.fill(FULL_SMS[:-1])
    expect_counter(counter, "SMS", 88)
    answer_box.press_sequentially(FULL_SMS[-1])  # the 45th syllable: 90 bytes, still one SMS
    expect_counter(counter, "SMS", 90)
    answer_box.press_sequentially("요")  # the 46th: 92 bytes, an LMS
    expect_counter(counter, "LMS", 92)
    answer_box.press("Backspace")
    expect_counter(counter, "SMS", 90)
    answer_box.press_sequentially("!")  # one byte over is over
    expect_counter(counter, "LMS", 91)
    answer_box.fill(ANSWER)
    expect_counter(counter, "SMS", 90)

    # Send: the answer is in the conversation, queued, and reaches the SMS provider as one SMS.
    page.click("form#answer-form button[type=submit]")
    sent = page.locator("#conversation li.msg", has_text=ANSWER)
    expect(sent.locator(".delivery")).to_have_text(re.compile("발송 대기|발송됨|전달됨"))  # queued, then sent
    expect(answer_box).to_have_value("")
    delivered = stack.wait_for(
        "the answer at the SMS provider",
        lambda: [d for d in stack.sms_deliveries() if d.to == citizen_e164 and d.text == ANSWER],
    )
    assert [d.channel for d in delivered] == ["sms"]
    page.screenshot(path=str(shots / "console-thread.png"), full_page=True)

    # A citizen who opted out: the answer is refused in Korean and nothing is queued.
    refuser, _ = mobile(3)
    refused_thread = stack.citizen_sms(refuser, "한빛로 5 보도블록이 깨졌어요", at=at)
    stack.citizen_sms(refuser, "수신거부", at=at + 1)
    page.goto(f"{stack.console_url}/threads/{refused_thread['thread']}")
    refusal = "수신거부한 분께 보낼 답장입니다"
    expect(page.locator("#answer-form .blocked")).to_contain_text("수신거부")  # said before anyone types
    claim(page)
    page.locator("textarea[name=text]#answer-text").fill(refusal)
    page.click("form#answer-form button[type=submit]")
    expect(page.locator("#flash [role=alert]")).to_contain_text("수신거부")
    expect(page.locator("#conversation")).not_to_contain_text(refusal)
    stack.settle()  # had it been queued, the worker would have sent it by now
    assert not [d for d in stack.sms_deliveries() if d.text == refusal]

    # Sign out: the console is closed to this browser.
    with page.expect_navigation():
        page.click("header form.who button[type=submit]")
    expect(page.locator('form[action="/login"]')).to_be_visible()
    page.goto(f"{stack.console_url}/")
    assert "/login" in page.url

    # Every step's access record, by alice, from the browser's address.
    rows = audit_rows(stack)
    assert has_record(rows, "alice", "login") and has_record(rows, "alice", "logout")
    assert has_record(rows, "alice", "view_inbox", about="complaint")
    assert has_record(rows, "alice", "view_thread", about=live["thread"])
    assert has_record(rows, "alice", "claim", about=live["thread"])
    assert has_record(rows, "alice", "reply", about=live["thread"])
    assert has_record(rows, "alice", "reply", result="failed", about=refused_thread["thread"])
    assert {r.ip for r in rows if r.account == "alice"} == {"127.0.0.1"}
    # Ids only: never a citizen's number or text in the access records.
    dump = repr(rows)
    assert citizen_e164[3:] not in dump and "가로등" not in dump and ANSWER not in dump
    audit_clean(stack)


def test_a_thread_of_another_queue_is_refused_and_recorded(
    stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext
) -> None:
    citizen, _ = mobile(4)
    thread = stack.citizen_sms(citizen, STREETLIGHT, at=received_for("complaint", STREETLIGHT))
    assert thread["queue"] == "complaint"
    page = new_context().new_page()
    signed_in(page, stack, BOB)
    response = page.goto(f"{stack.console_url}/threads/{thread['thread']}")
    assert response is not None and response.status == 403
    expect(page.locator("[role=alert]")).to_contain_text("권한")
    assert STREETLIGHT not in page.content()
    rows = audit_rows(stack)
    assert has_record(rows, "bob", "denied", result="denied", about=thread["thread"])
    assert not has_record(rows, "bob", "view_thread", about=thread["thread"])
    audit_clean(stack)


def test_five_wrong_passwords_lock_the_account(
    stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext
) -> None:
    page = new_context().new_page()
    wrong = Person(CAROL.username, CAROL.name, CAROL.role, CAROL.queues, "Not-her-password-1")
    error = page.locator("#login-error")
    for _ in range(4):
        log_in(page, stack, wrong)
        expect(error).to_be_visible()
        expect(error).not_to_contain_text("잠겼")
    log_in(page, stack, wrong)  # the fifth
    expect(error).to_contain_text("계정이 잠겼습니다")
    log_in(page, stack, CAROL)  # the right password, too late
    expect(error).to_contain_text("계정이 잠겼습니다")
    assert urlsplit(page.url).path == "/login"
    expect(page.locator("header .who")).to_have_count(0)
    rows = audit_rows(stack)
    assert len([r for r in rows if r.account == "carol" and r.action == "login_failed"]) == 6
    assert has_record(rows, "carol", "locked", result="failed")
    assert not has_record(rows, "carol", "login")
    audit_clean(stack)


def test_phone_width(stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext, shots: Path) -> None:
    at = received_for("complaint", STREETLIGHT)
    citizen, _ = mobile(5)
    thread = stack.citizen_sms(citizen, "한빛로 7 맨홀 뚜껑이 흔들려서 위험해 보입니다. 빨리 확인 부탁드립니다", at=at)
    stack.citizen_sms(mobile(6)[0], "당직실입니다 확인 바랍니다", to=DUTY_NUMBER)
    page = new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2).new_page()
    signed_in(page, stack, DAVE)
    page.goto(f"{stack.console_url}/?queue=complaint")
    expect(page.locator(f'li.thread[data-thread="{thread["thread"]}"]')).to_be_visible()
    no_horizontal_scroll(page)
    page.screenshot(path=str(shots / "console-phone.png"))
    page.goto(f"{stack.console_url}/threads/{thread['thread']}")
    expect(page.locator("#conversation")).to_contain_text("맨홀")
    no_horizontal_scroll(page)


def test_status_page(stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext, shots: Path) -> None:
    page = new_context().new_page()
    signed_in(page, stack, ERIN)
    response = page.goto(f"{stack.console_url}/status")
    assert response is not None and response.status == 200
    assert "content-security-policy" in response.headers
    expect(page.locator("main")).to_contain_text("Redis")
    page.screenshot(path=str(shots / "console-status.png"))
    # A staff member without the telecom role does not get it.
    other = new_context().new_page()
    signed_in(other, stack, ALICE)
    refused = other.goto(f"{stack.console_url}/status")
    assert refused is not None and refused.status == 403
    audit_clean(stack)


def test_an_altered_access_record_is_caught(
    stack: ConsoleStack, people: tuple[Person, ...], new_context: NewContext, tmp_path: Path
) -> None:
    """`audit_clean` can fail: on a copy of the records file where one of bob's sign-ins was
    made to come from elsewhere, `gateway audit verify` exits 1 (the stack's file is untouched)."""
    signed_in(new_context().new_page(), stack, BOB)
    copy = tmp_path / "records-copy.sqlite3"
    source, target = sqlite3.connect(stack.records_url.removeprefix("sqlite:///")), sqlite3.connect(copy)
    try:
        source.backup(target)  # the WAL's newest rows included
        with target:
            changed = target.execute(
                "UPDATE audit_log SET ip = '203.0.113.7' WHERE account = 'bob' AND action = 'login'"
            ).rowcount
    finally:
        source.close()
        target.close()
    assert changed >= 1
    altered = stack.cli("audit", "verify", "--records", f"sqlite:///{copy}", check=False)
    assert altered.code == 1 and "BROKEN" in altered.out, altered
    audit_clean(stack)
