"""The console's sign-in, sign-out, password change and admin pages over real HTTP (aiohttp's
test server on 127.0.0.1), with the real directory, access log, Redis sessions and throttle."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.console import admin, auth
from gateway.console.app import DEPS, ConsoleDeps, make_console_app
from gateway.domain.numbers import NumberPlan
from gateway.domain.staff import LoginPolicy
from gateway.infra.config import ConsoleConfig
from gateway.staff.accounts import SqlStaffDirectory
from gateway.staff.sessions import RedisSessions
from gateway.staff.throttle import Throttle
from tests.staff.conftest import Staff, make_staff

ADMIN_PW = "Admin-Pass-2026!"
KIM_PW = "Hanbit-Duty-2026!"


@dataclass
class Console:
    client: TestClient[Any, Any]
    staff: Staff
    directory: SqlStaffDirectory

    async def form(self, path: str) -> str:
        """The CSRF token of the form on `path`."""
        async with self.client.get(path, allow_redirects=False) as resp:
            assert resp.status == 200, (path, resp.status)
            match = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert match
        return match.group(1)

    async def login(self, username: str, password: str, next_: str = "/") -> tuple[int, str, str]:
        """Sign in as `username` (a new browser: no cookies of an earlier person)."""
        self.client.session.cookie_jar.clear()
        token = await self.form("/login")
        data = {"csrf": token, "username": username, "password": password, "next": next_}
        async with self.client.post("/login", data=data, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()

    async def post(self, path: str, data: dict[str, str], *, csrf_from: str | None = None) -> tuple[int, str, str]:
        token = await self.form(csrf_from or path)
        async with self.client.post(path, data={"csrf": token, **data}, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()

    async def actions(self) -> list[tuple[str, str, str, str]]:
        found = await self.staff.access.list(limit=1000)
        return [(r.entry.account, r.entry.action, r.entry.target, r.entry.detail) for r in reversed(found)]


@pytest.fixture
async def console(sqlite_records_url: str, redis_url: str) -> AsyncIterator[Console]:
    client_redis = aioredis.Redis.from_url(redis_url)
    sessions = RedisSessions(client_redis, idle_s=600, max_s=3600)
    staff = await make_staff(sqlite_records_url)
    directory = SqlStaffDirectory(
        staff.store, staff.access, LoginPolicy(max_failures=5, lock_s=600), Throttle(client_redis), sessions=sessions
    )
    await directory.add("cli:root", "boss", "관리자", "admin", queues="*", password=ADMIN_PW)
    await directory.add("cli:root", "kim", "김민원", "staff", queues="duty", password=KIM_PW)

    async def health() -> dict[str, Any]:
        return {}

    deps = ConsoleDeps(
        config=ConsoleConfig(secure_cookie=False),
        intake=None,
        directory=directory,
        access=staff.access,
        sessions=sessions,
        plan=NumberPlan(),
        health=health,
    )

    async def home(_: web.Request) -> web.Response:
        return web.Response(text="inbox")

    def routes(app: web.Application) -> None:
        auth.add_routes(app)
        admin.add_routes(app)
        app.router.add_get("/", home)

    client: TestClient[Any, Any] = TestClient(TestServer(make_console_app(deps, routes), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Console(client, staff, directory)
    finally:
        await client.close()
        await staff.store.close()
        await client_redis.aclose()


async def test_sign_in_sets_a_strict_session_cookie_and_goes_to_a_local_next(console: Console) -> None:
    token = await console.form("/login")
    async with console.client.get("/login") as resp:
        login_cookie = resp.headers["Set-Cookie"]
    assert "gw_login_csrf=" in login_cookie and "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    assert token
    data = {"csrf": await console.form("/login"), "username": "kim", "password": KIM_PW, "next": "/threads/t1"}
    async with console.client.post("/login", data=data, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/threads/t1"
        cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("gw_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Max-Age" not in cookie and "expires" not in cookie.lower()  # ends with the browser
    async with console.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 200 and await resp.text() == "inbox"
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", "/a\r\nX: y"):
        assert auth.safe_next(evil) == "/", evil
    assert (await console.login("kim", KIM_PW, next_="//evil.example/x"))[1] == "/"
    assert ("kim", "login", "", "") in await console.actions()


async def test_a_secure_cookie_when_configured(console: Console) -> None:
    data = {"csrf": await console.form("/login"), "username": "kim", "password": KIM_PW}
    # (switched after the form: the test client keeps a Secure cookie from plain HTTP to itself)
    console.client.app[DEPS].config = ConsoleConfig(secure_cookie=True)
    async with console.client.post("/login", data=data, allow_redirects=False) as resp:
        cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("gw_console="))
    assert "Secure" in cookie


async def test_failures_say_the_same_thing_and_a_lock_says_until_when(console: Console) -> None:
    unknown = await console.login("nobody", KIM_PW)
    wrong = await console.login("kim", "wrong-password")
    assert unknown[0] == wrong[0] == 401
    message = auth.FAILED
    assert message in unknown[2] and message in wrong[2]
    for _ in range(4):
        await console.login("kim", "wrong-password")
    locked = await console.login("kim", KIM_PW)
    assert locked[0] == 401 and re.search(r"\d\d:\d\d 이후", locked[2])
    assert [a[1] for a in await console.actions() if a[0] == "kim"].count("locked") == 1


async def test_a_form_without_its_token_is_refused(console: Console) -> None:
    async with console.client.post("/login", data={"username": "kim", "password": KIM_PW}, allow_redirects=False) as r:
        assert r.status == 403
    async with console.client.post(
        "/login", data={"csrf": "forged", "username": "kim", "password": KIM_PW}, allow_redirects=False
    ) as r:
        assert r.status == 403
    assert "login" not in [a[1] for a in await console.actions()]


async def test_failed_sign_ins_are_throttled_per_user_name(console: Console) -> None:
    for _ in range(10):
        assert (await console.login("nobody", "x-y-z-1"))[0] == 401
    status, _, body = await console.login("nobody", "x-y-z-1")
    assert status == 429 and auth.THROTTLED in body


async def test_logout_is_recorded_and_ends_the_session(console: Console) -> None:
    assert (await console.login("kim", KIM_PW))[0] == 303
    status, location, _ = await console.post("/logout", {}, csrf_from="/password")
    assert (status, location) == (303, "/login")
    async with console.client.get("/password", allow_redirects=False, headers={"Accept": "text/html"}) as resp:
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    assert ("kim", "logout", "", "") in await console.actions()


async def test_a_reset_password_must_be_changed_first(console: Console) -> None:
    temporary = await console.directory.reset_password("boss", "kim")
    status, location, _ = await console.login("kim", temporary, next_="/admin/accounts")
    assert (status, location) == (303, "/password")
    async with console.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/password"
    status, _, body = await console.post("/password", {"current": temporary, "new": "short", "confirm": "short"})
    assert status == 400 and "10자 이상" in body
    new = "Fresh-Pass-9090"
    status, _, body = await console.post("/password", {"current": temporary, "new": new, "confirm": new})
    assert status == 200 and "비밀번호를 바꿨습니다" in body
    async with console.client.get("/", allow_redirects=False) as resp:
        assert resp.status == 200
    assert ("kim", "password_change", "kim", "") in await console.actions()


async def test_admin_pages_are_for_admins_only_and_a_try_is_recorded(console: Console) -> None:
    await console.login("kim", KIM_PW)
    for path in ("/admin/accounts", "/admin/accounts/boss", "/admin/audit"):
        async with console.client.get(path, allow_redirects=False) as resp:
            assert resp.status == 403, path
    status, _, _ = await console.post("/admin/accounts/boss", {"action": "disable"}, csrf_from="/password")
    assert status == 403
    denied = [a for a in await console.actions() if a[1] == "denied"]
    assert [(a[0], a[2]) for a in denied] == [
        ("kim", "/admin/accounts"),
        ("kim", "/admin/accounts/boss"),
        ("kim", "/admin/audit"),
        ("kim", "/admin/accounts/boss"),
    ]
    assert not (await console.directory.by_username("boss")).disabled  # type: ignore[union-attr]


async def test_an_admin_manages_accounts_and_secrets_are_shown_once(console: Console) -> None:
    await console.login("boss", ADMIN_PW)
    async with console.client.get("/admin/accounts") as resp:
        page = await resp.text()
    assert "김민원" in page and "관리자" in page and "$argon2" not in page
    status, _, body = await console.post(
        "/admin/accounts", {"username": "lee", "display_name": "이담당", "role": "staff", "queues": "complaint"}
    )
    assert status == 200
    secret = re.search(r'id="secret-value">([^<]+)<', body)
    assert secret and (await console.directory.login("lee", secret.group(1), ip="x")).account is not None
    status, _, body = await console.post(
        "/admin/accounts", {"username": "lee", "display_name": "또", "role": "staff"}, csrf_from="/admin/accounts"
    )
    assert status == 400 and "이미" in body
    here = "/admin/accounts/lee"
    status, location, _ = await console.post(
        here, {"action": "update", "display_name": "이담당", "role": "telecom", "queues": "duty,complaint"}
    )
    assert (status, location) == (303, f"{here}?done=changed")
    status, _, body = await console.post(here, {"action": "token", "label": "연동"})
    token = re.search(r'id="secret-value">([^<]+)<', body)
    assert status == 200 and token and token.group(1).startswith("gwt_")
    status, _, body = await console.post(here, {"action": "reset"})
    assert status == 200 and re.search(r'id="secret-value">([^<]+)<', body)
    async with console.client.get(here) as resp:
        again = await resp.text()
    assert token.group(1) not in again and 'id="secret-value"' not in again  # shown once
    assert (await console.post(here, {"action": "disable"}))[1] == f"{here}?done=disabled"
    status, _, body = await console.post("/admin/accounts/boss", {"action": "disable"})
    assert status == 400 and "자기 계정" in body
    chain = [(a[0], a[1], a[2]) for a in await console.actions() if a[0] == "boss" and a[1] != "login"]
    assert chain == [
        ("boss", "account_add", "lee"),
        ("boss", "account_change", "lee"),
        ("boss", "token_issue", "lee"),
        ("boss", "password_reset", "lee"),
        ("boss", "account_disable", "lee"),
    ]


async def test_the_audit_page_verifies_filters_and_exports_with_a_reason(console: Console) -> None:
    await console.login("kim", KIM_PW)
    await console.login("boss", ADMIN_PW)
    async with console.client.get("/admin/audit?account=kim&action=login") as resp:
        page = await resp.text()
    assert resp.status == 200 and "위·변조 없음" in page
    assert page.count('data-action="login"') == 1
    status, _, body = await console.post(
        "/admin/audit/export", {"since": "2020-01-01", "reason": " "}, csrf_from="/admin/audit"
    )
    assert status == 400 and "사유" in body
    token = await console.form("/admin/audit")
    data = {
        "csrf": token,
        "since": "2020-01-01",
        "until": "",
        "account": "",
        "subject": "",
        "action": "",
        "reason": "12월 월간 점검",
    }
    async with console.client.post("/admin/audit/export", data=data) as resp:
        assert resp.status == 200 and resp.headers["Content-Disposition"].startswith("attachment")
        csv_body = await resp.read()
    assert csv_body.startswith("\ufeff".encode()) and "로그인" in csv_body.decode("utf-8-sig")
    actions = await console.actions()
    assert ("boss", "audit_view", "", "account=kim action=login") in actions
    assert ("boss", "audit_export", "2020-01-01~현재", "12월 월간 점검") in actions
