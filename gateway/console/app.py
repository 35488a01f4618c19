"""The staff console: server-rendered pages (aiohttp + Jinja2, htmx for partial updates) on a
listener of its own, apart from the public webhooks, so that a reverse proxy keeps it inside the
city's network.

This module assembles the app and holds what every page shares:

* `security` (a middleware: this listener serves staff only, so wrapping every request costs
  nothing that matters): a strict Content-Security-Policy (only this origin's scripts and styles,
  no inline script, no frames), no caching of pages, no referrer;
* `signed_in`: the session cookie to a `ConsoleSession` and its `Account` (request[ACCOUNT]);
  pages other than the sign-in page and the static files need one; a disabled account's sessions
  end at its next request;
* `csrf`: every state-changing request carries the session's CSRF token (a form field `csrf` or
  the `X-CSRF-Token` header htmx sends) and, when the browser sends one, an `Origin` of this host;
* `record`: the access record (접속기록) of a page or an action, written before the answer.

Pages live in their own modules (`auth`, `inbox`, `thread`, `admin`, `status`, `events`), each
with an `add_routes(app)` that reads `DEPS` from the app.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from aiohttp import web

from gateway.domain.audit import AccessEntry
from gateway.domain.numbers import NumberPlan
from gateway.domain.staff import Account
from gateway.errors import GatewayError, StoreUnavailable
from gateway.infra.config import ConsoleConfig
from gateway.ports import AccessLog, ConsoleSession, SessionStore, StaffDirectory

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
SESSION_COOKIE = "gw_console"
LOGIN_CSRF_COOKIE = "gw_login_csrf"
# Pages anyone may reach: the sign-in page and its form, the static files, the liveness probe.
# (/favicon.ico: browsers ask for it on their own; redirected to /login, it would replace the
# sign-in form's token cookie behind the form's back.)
PUBLIC = ("/login", "/static/", "/healthz", "/favicon.ico")
# What a person who must change their password may reach until they have.
FORCED = ("/password", "/logout", "/login", "/static/", "/healthz")

# Only this origin's files; no inline script or style (htmx is told not to add its indicator
# style, see base.html); no frames of it anywhere (clickjacking); forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": with it, Chromium sends `Origin: null` on the console's own form posts,
    # which the `csrf` origin check then refuses. "same-origin" still sends nothing elsewhere.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ConsoleDeps:
    """What the console's pages use, given by the composition root (`gateway.app.gateway`).

    `intake` is the inbox flow (`gateway.inbox.intake.Intake`), typed loosely here so that the
    pages' tests can pass the real one without this module importing the flow's internals;
    `health` is the gateway's /health document; `extras` holds optional parts by name (the
    records store for the report downloads, the console rules, the live-event hub)."""

    config: ConsoleConfig
    intake: Any
    directory: StaffDirectory
    access: AccessLog
    sessions: SessionStore
    plan: NumberPlan
    health: Callable[[], Awaitable[dict[str, Any]]]
    extras: dict[str, Any] = field(default_factory=dict)


DEPS: web.AppKey[ConsoleDeps] = web.AppKey("console_deps", ConsoleDeps)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("console_templates", jinja2.Environment)
# The signed-in person and their session, set by `signed_in` (absent on public pages).
ACCOUNT: web.RequestKey[Account] = web.RequestKey("console_account", Account)
SESSION: web.RequestKey[ConsoleSession] = web.RequestKey("console_session", ConsoleSession)


def client_ip(request: web.Request) -> str:
    """Where a request came from, for the access records. The console's reverse proxy, when there
    is one, is the peer; the city's proxy is expected to pass the user's address in X-Real-IP,
    which is trusted only from a loopback peer (the proxy on the same host)."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Real-IP", "")
    if forwarded and peer in ("127.0.0.1", "::1") and len(forwarded) <= 64:
        return forwarded
    return peer


def account_of(request: web.Request) -> Account:
    """The signed-in person (set by `signed_in`; only called on pages that require one)."""
    account = request.get(ACCOUNT)
    if not isinstance(account, Account):
        raise web.HTTPUnauthorized()
    return account


def session_of(request: web.Request) -> ConsoleSession:
    session = request.get(SESSION)
    if not isinstance(session, ConsoleSession):
        raise web.HTTPUnauthorized()
    return session


async def record(
    request: web.Request,
    action: str,
    *,
    subject: str = "",
    target: str = "",
    result: str = "ok",
    detail: str = "",
    account: str | None = None,
) -> None:
    """Write the access record of what this request does, before it is done or shown: raises
    `StoreUnavailable` (answered 503) when it cannot be written."""
    who = account if account is not None else (request[ACCOUNT].username if ACCOUNT in request else "")
    await request.app[DEPS].access.record(
        AccessEntry(
            at=time.time(),
            account=who,
            ip=client_ip(request),
            action=action,
            subject=subject,
            target=target,
            result=result,
            detail=detail,
        )
    )


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: web.Request, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
) -> web.Response:
    """A page or fragment from `templates/`, with what every page shows (the person, the CSRF
    token) added to `context`."""
    env = request.app[TEMPLATES]
    session = request.get(SESSION)
    base = {
        "me": request.get(ACCOUNT),
        "csrf": session.csrf if isinstance(session, ConsoleSession) else "",
        "path": request.path,
    }
    body = env.get_template(template).render({**base, **(context or {})})
    return web.Response(text=body, content_type="text/html", charset="utf-8", status=status)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An error in Korean: a fragment for htmx, a whole page otherwise."""
    if is_htmx(request):
        return web.Response(
            text=f'<p class="error" role="alert">{markupsafe.escape(message)}</p>',
            content_type="text/html",
            charset="utf-8",
            status=status,
            # htmx swaps only 2xx answers by default; this tells console.js where to show it.
            headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
        )
    return render(request, "error.html", {"status": status, "message": message}, status=status)


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # (raised again, as aiohttp wants: redirects and 4xx carry the same headers)
        _secure(request, exc)
        raise
    except StoreUnavailable:
        # Redis or the records database cannot answer (or an access record cannot be written):
        # nothing was shown or done.
        response = error_page(request, 503, "일시적으로 저장소에 연결할 수 없습니다. 잠시 후 다시 시도해 주세요.")
    except GatewayError as exc:
        if exc.http_status >= 500:
            log.exception("console: %s %s failed", request.method, request.path)
        response = error_page(request, exc.http_status if exc.http_status < 500 else 500, str(exc))
    _secure(request, response)
    return response


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    """request[SESSION] and request[ACCOUNT] from the session cookie; to the sign-in page
    (htmx: an HX-Redirect) when there is none on a page that needs one."""
    deps = request.app[DEPS]
    sid = request.cookies.get(SESSION_COOKIE, "")
    if sid:
        session = await deps.sessions.get(sid)
        if session is not None:
            account = await deps.directory.account(session.account_id)
            if account is None or account.disabled:
                await deps.sessions.destroy(sid)
            else:
                request[SESSION], request[ACCOUNT] = session, account
    if ACCOUNT not in request and not request.path.startswith(PUBLIC):
        if sid:  # a cookie that no longer opens a session: idle, too old, or ended elsewhere
            await record(request, "session_expired", result="failed", account="")
        target = "/login"
        if is_htmx(request):
            return web.Response(status=401, headers={"HX-Redirect": target})
        if "text/event-stream" in request.headers.get("Accept", ""):
            # A page's live stream (EventSource follows redirects): a sign-in page is no stream.
            return web.Response(status=401, text="로그인이 필요합니다.")
        if request.method == "GET" and request.path != "/":
            target = f"/login?next={request.rel_url.path}"
        raise web.HTTPSeeOther(target)
    # A new or reset password is changed first (gateway.console.auth.needs_password_change).
    if request.get(ACCOUNT) and request[ACCOUNT].must_change_password and not request.path.startswith(FORCED):
        return web.Response(status=401, headers={"HX-Redirect": "/password"}) if is_htmx(request) else _to_password()
    return await handler(request)


def _to_password() -> web.Response:
    return web.Response(status=303, headers={"Location": "/password"})


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """State-changing requests carry the session's token (or, on the sign-in form, the token of
    the sign-in cookie) and come from this origin."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return error_page(request, 403, "다른 사이트에서 보낸 요청은 받지 않습니다.")
    given = request.headers.get("X-CSRF-Token", "")
    if not given and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        given = str((await request.post()).get("csrf", ""))
    session = request.get(SESSION)
    # The sign-in form carries its own token (also when posted from a second tab by someone
    # already signed in); every other form the session's.
    if request.path == "/login":
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    else:
        expected = session.csrf if isinstance(session, ConsoleSession) else ""
    if not expected or not given or not hmac.compare_digest(given, expected):
        return error_page(request, 403, "보안 토큰이 맞지 않습니다. 페이지를 새로 고친 뒤 다시 시도해 주세요.")
    return await handler(request)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def templates() -> jinja2.Environment:
    """The console's Jinja2 environment: HTML autoescaped, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["htmx"] = "/static/vendor/htmx-2.0.11.min.js"
    return env


def make_console_app(deps: ConsoleDeps, routes: Callable[[web.Application], None] | None = None) -> web.Application:
    """The console's app: the middlewares above, /static, /healthz, and every page module's
    routes (`gateway.console.pages.add_routes` by default)."""
    app = web.Application(middlewares=[security, signed_in, csrf], client_max_size=64 * 1024)
    app[DEPS] = deps
    app[TEMPLATES] = templates()
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/healthz", healthz)
    if routes is None:
        from gateway.console.pages import add_routes

        routes = add_routes
    routes(app)
    return app
