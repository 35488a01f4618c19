"""Signing in and out, and changing one's own password.

* `GET /login`: the form, with a CSRF token of its own (the `gw_login_csrf` cookie and a hidden
  field: there is no session yet to hold one).
* `POST /login`: throttled per address and per user name, then the directory's check
  (`gateway.staff.accounts.SqlStaffDirectory.login`: Argon2id, lockout, access records). On
  success a new session (`gw_console`: HttpOnly, SameSite=Strict, Secure unless the console is
  configured for plain-HTTP loopback, no Max-Age: it ends with the browser) and a redirect to
  `next` when that is a path of this site. A failure says one thing whether or not the user
  exists; only a locked account is told until when.
* `POST /logout`: recorded (LOGOUT), the session ended, the cookie cleared.
* `GET|POST /password`: one's own new password (the current one, the new one twice; the rule
  of `gateway.domain.staff.password_problems`). A person whose password was reset must change
  it first: until then the console's `signed_in` middleware lets them reach only this page and
  `/logout` (`needs_password_change`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.console.app import (
    ACCOUNT,
    DEPS,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    account_of,
    client_ip,
    new_token,
    record,
    render,
)
from gateway.domain.audit import Action
from gateway.domain.records import SEOUL
from gateway.domain.staff import Account
from gateway.staff.accounts import AccountProblem, SqlStaffDirectory

FAILED = "사용자 이름 또는 비밀번호가 맞지 않습니다."
THROTTLED = "로그인 시도가 너무 많습니다. 잠시 후 다시 시도해 주세요."
MAX_FIELD = 256  # a user name or password longer than this is not checked (bounded Argon2 work)


def needs_password_change(account: Account) -> bool:
    """Whether the person must set a new password before anything else (a new account, a reset)."""
    return account.must_change_password


def safe_next(value: str) -> str:
    """`next` when it is a path of this site ("/..."), else "/": never another site
    ("//host", "/\\host", a scheme) and nothing a header could be split with."""
    if (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        or len(value) > 500
    ):
        return "/"
    return value


def locked_message(until: float | None) -> str:
    if until is None:
        return "계정이 잠겼습니다. 잠시 후 다시 시도하거나 관리자에게 잠금 해제를 요청해 주세요."
    at = datetime.fromtimestamp(until, SEOUL).strftime("%H:%M")
    return f"로그인에 여러 번 실패해 계정이 잠겼습니다. {at} 이후 다시 시도하거나 관리자에게 잠금 해제를 요청해 주세요."


def _cookie_flags(request: web.Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "Strict", "secure": request.app[DEPS].config.secure_cookie}


def _login_form(
    request: web.Request, *, username: str = "", error: str = "", status: int = 200, token: str | None = None
) -> web.Response:
    """The sign-in page with a fresh form token (cookie and hidden field)."""
    # The token of the form already open in another tab stays valid (one per browser, an hour).
    existing = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    token = token or (existing if 20 <= len(existing) <= 64 else "") or new_token()
    response = render(
        request,
        "login.html",
        {"csrf": token, "username": username, "error": error, "next": safe_next(request.query.get("next", "/"))},
        status=status,
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", max_age=3600, **_cookie_flags(request))
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if ACCOUNT in request:
        raise web.HTTPSeeOther(safe_next(request.query.get("next", "/")))
    return _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    """Check the form (its CSRF token was checked by the `csrf` middleware)."""
    form = await request.post()
    username = str(form.get("username", "")).strip()[:MAX_FIELD]
    password = str(form.get("password", ""))
    target = safe_next(str(form.get("next", "/")))
    if not username or not password or len(password) > MAX_FIELD:
        return _login_form(request, username=username, error=FAILED, status=401)
    deps = request.app[DEPS]
    outcome = await deps.directory.login(username, password, ip=client_ip(request))
    if outcome.account is None:
        if outcome.reason == "throttled":
            return _login_form(request, username=username, error=THROTTLED, status=429)
        if outcome.reason == "locked":
            return _login_form(request, username=username, error=locked_message(outcome.locked_until), status=401)
        return _login_form(request, username=username, error=FAILED, status=401)
    # A fresh session id at every sign-in (no fixation); the old one, if any, ends.
    old = request.cookies.get(SESSION_COOKIE, "")
    if old:
        await deps.sessions.destroy(old)
    session = await deps.sessions.create(outcome.account.id, ip=client_ip(request))
    response = _see_other("/password" if needs_password_change(outcome.account) else target)
    response.set_cookie(SESSION_COOKIE, session.id, path="/", **_cookie_flags(request))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    sid = request.cookies.get(SESSION_COOKIE, "")
    if ACCOUNT in request:
        await record(request, Action.LOGOUT)
    if sid:
        await deps.sessions.destroy(sid)
    response = _see_other("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _directory(request: web.Request) -> SqlStaffDirectory:
    directory = request.app[DEPS].directory
    if not isinstance(directory, SqlStaffDirectory):
        raise web.HTTPServiceUnavailable(text="accounts cannot be changed here")
    return directory


async def password_page(request: web.Request) -> web.Response:
    account = account_of(request)
    return render(request, "password.html", {"forced": needs_password_change(account), "errors": [], "done": False})


async def change_password(request: web.Request) -> web.Response:
    account = account_of(request)
    form = await request.post()
    old, new, again = (str(form.get(k, "")) for k in ("current", "new", "confirm"))
    errors: list[str] = []
    if new != again:
        errors.append("새 비밀번호와 확인이 서로 다릅니다.")
    elif len(old) > MAX_FIELD:
        errors.append("현재 비밀번호가 맞지 않습니다.")
    else:
        try:
            await _directory(request).change_password(account, old, new, ip=client_ip(request))
        except AccountProblem as exc:
            errors.append(str(exc))
    if errors:
        context = {"forced": needs_password_change(account), "errors": errors, "done": False}
        return render(request, "password.html", context, status=400)
    request[ACCOUNT] = Account(
        account.id, account.username, account.display_name, account.role, account.queues, account.disabled, False
    )
    return render(request, "password.html", {"forced": False, "errors": [], "done": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/password", password_page)
    app.router.add_post("/password", change_password)
