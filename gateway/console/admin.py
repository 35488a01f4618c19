"""The administrators' pages: accounts and the access records (접속기록).

Admins only: anyone else is answered 403 and the attempt is recorded (DENIED).

* `/admin/accounts`: every account (name, user name, role, queues, state, last sign-in, lock)
  and the form to add one (its temporary password is shown once);
* `/admin/accounts/{user}`: change name, role and queues; disable or enable; reset the password
  (a temporary one, shown once); unlock; issue a personal staff-API token (shown once) and
  revoke tokens. Each change is recorded on the ACCOUNTS chain by `SqlStaffDirectory`.
* `/admin/audit`: the records filtered by date range, account, subject and action (viewing them
  is itself recorded: AUDIT_VIEW), with both chains' verification on top; a CSV export of a
  date range with a required reason (recorded as AUDIT_EXPORT with the reason) for the
  monthly check.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.console.app import DEPS, account_of, client_ip, error_page, record, render
from gateway.domain.audit import ACTION_LABELS, Action, Chain, VerifyResult
from gateway.domain.records import SEOUL
from gateway.domain.staff import ROLE_LABELS
from gateway.staff.accounts import AccountNotFound, AccountProblem, SqlStaffDirectory, queues_text
from gateway.staff.audit import RESULT_LABELS, SqlAccessLog, seoul_time

PAGE = 100
VERIFY_TTL_S = 60.0  # the audit page re-verifies the chains at most this often (unless asked)
DONE = {
    "added": "계정을 만들었습니다.",
    "changed": "바꾼 내용을 저장했습니다.",
    "unchanged": "바뀐 내용이 없습니다.",
    "disabled": "계정을 비활성화했습니다. 로그인과 API 토큰이 더는 쓰이지 않습니다.",
    "enabled": "계정을 다시 활성화했습니다.",
    "unlocked": "잠금을 해제했습니다.",
    "revoked": "API 토큰을 폐기했습니다.",
}

_verified: dict[int, tuple[float, list[VerifyResult]]] = {}


async def _admin(request: web.Request) -> web.Response | None:
    """None for an admin; else the 403 page, the attempt recorded (DENIED)."""
    if account_of(request).is_admin:
        return None
    await record(request, Action.DENIED, target=request.path[:200], result="denied", detail="admin page")
    return error_page(request, 403, "관리자만 볼 수 있는 화면입니다.")


def _directory(request: web.Request) -> SqlStaffDirectory:
    directory = request.app[DEPS].directory
    if not isinstance(directory, SqlStaffDirectory):
        raise web.HTTPServiceUnavailable(text="account administration is not available")
    return directory


def _access(request: web.Request) -> SqlAccessLog:
    access = request.app[DEPS].access
    if not isinstance(access, SqlAccessLog):
        raise web.HTTPServiceUnavailable(text="access records are not available")
    return access


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _base(request: web.Request) -> dict[str, Any]:
    return {"roles": {str(r): label for r, label in ROLE_LABELS.items()}, "now": time.time(), "when": seoul_time}


# ------------------------------------------------------------------ accounts


async def accounts_page(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    infos = await _directory(request).infos()
    done = DONE.get(request.query.get("done", ""), "")
    context = {
        **_base(request),
        "infos": infos,
        "error": "",
        "secret": "",
        "added": "",
        "done": done,
        "queues_text": queues_text,
        "form": {},
    }
    return render(request, "admin_accounts.html", context)


async def add_account(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    form = await request.post()
    fields = {k: str(form.get(k, "")).strip() for k in ("username", "display_name", "role", "queues")}
    try:
        account, secret = await _directory(request).add(
            account_of(request).username,
            fields["username"],
            fields["display_name"],
            fields["role"],
            queues=fields["queues"],
            ip=client_ip(request),
        )
    except AccountProblem as exc:
        infos = await _directory(request).infos()
        context = {**_base(request), "infos": infos, "error": str(exc), "secret": "", "added": "", "done": ""}
        return render(
            request, "admin_accounts.html", {**context, "queues_text": queues_text, "form": fields}, status=400
        )
    infos = await _directory(request).infos()
    context = {
        **_base(request),
        "infos": infos,
        "error": "",
        "secret": secret,
        "added": account.username,
        "done": DONE["added"],
        "queues_text": queues_text,
        "form": {},
    }
    return render(request, "admin_accounts.html", context)


async def _account_context(request: web.Request, username: str) -> dict[str, Any]:
    directory = _directory(request)
    info = await directory.info(username)
    if info is None:
        raise AccountNotFound(f"계정 {username!r}이(가) 없습니다.")
    return {
        **_base(request),
        "info": info,
        "a": info.account,
        "tokens": await directory.tokens(username),
        "queues": queues_text(info.account.queues),
        "error": "",
        "secret": "",
        "secret_kind": "",
        "done": DONE.get(request.query.get("done", ""), ""),
    }


async def account_page(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    return render(request, "admin_account.html", await _account_context(request, request.match_info["username"]))


async def account_action(request: web.Request) -> web.Response:
    """Every change of one account, by the form's `action` field."""
    refused = await _admin(request)
    if refused is not None:
        return refused
    username = request.match_info["username"]
    directory = _directory(request)
    actor, ip = account_of(request).username, client_ip(request)
    form = await request.post()
    action = str(form.get("action", ""))
    here = f"/admin/accounts/{quote(username)}"
    try:
        if action == "update":
            before = await directory.info(username)
            after = await directory.update(
                actor,
                username,
                display_name=str(form.get("display_name", "")),
                role=str(form.get("role", "")),
                queues=str(form.get("queues", "")),
                ip=ip,
            )
            changed = before is not None and after != before.account
            return _see_other(f"{here}?done={'changed' if changed else 'unchanged'}")
        if action in ("disable", "enable"):
            if action == "disable" and username == actor:
                raise AccountProblem("자기 계정은 비활성화할 수 없습니다.")
            await getattr(directory, action)(actor, username, ip=ip)
            return _see_other(f"{here}?done={action}d")
        if action == "unlock":
            await directory.unlock(actor, username, ip=ip)
            return _see_other(f"{here}?done=unlocked")
        if action == "revoke":
            await directory.revoke_token(actor, str(form.get("token", "")), ip=ip)
            return _see_other(f"{here}?done=revoked")
        if action == "reset":
            secret = await directory.reset_password(actor, username, ip=ip)
            context = await _account_context(request, username)
            return render(request, "admin_account.html", {**context, "secret": secret, "secret_kind": "password"})
        if action == "token":
            token = await directory.issue_token(actor, username, str(form.get("label", "")), ip=ip)
            context = await _account_context(request, username)
            return render(request, "admin_account.html", {**context, "secret": token, "secret_kind": "token"})
    except AccountProblem as exc:
        context = await _account_context(request, username)
        return render(request, "admin_account.html", {**context, "error": str(exc)}, status=400)
    return error_page(request, 400, "알 수 없는 요청입니다.")


# ------------------------------------------------------------------ access records


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _midnight(day: date) -> float:
    return datetime.combine(day, datetime.min.time(), SEOUL).timestamp()


def _filters(query: Any) -> tuple[dict[str, Any], dict[str, str], str]:
    """(the access log's filter arguments, the form's values, a problem or "")."""
    raw = {k: str(query.get(k, "")).strip()[:100] for k in ("since", "until", "account", "subject", "action")}
    since, until = _day(raw["since"]), _day(raw["until"])
    problem = ""
    if (raw["since"] and since is None) or (raw["until"] and until is None):
        problem = "날짜는 YYYY-MM-DD 형식으로 적어 주세요."
    if raw["action"] and raw["action"] not in ACTION_LABELS:
        problem = "알 수 없는 수행업무입니다."
    args: dict[str, Any] = {
        "since": _midnight(since) if since else None,
        "until": _midnight(until + timedelta(days=1)) if until else None,
        "account": raw["account"] or None,
        "subject": raw["subject"] or None,
        "action": raw["action"] if raw["action"] in ACTION_LABELS else None,
    }
    return args, raw, problem


async def _verify(access: SqlAccessLog, *, fresh: bool) -> tuple[list[VerifyResult], float]:
    cached = _verified.get(id(access))
    now = time.time()
    if cached is None or fresh or now - cached[0] > VERIFY_TTL_S:
        cached = (now, await access.verify())
        _verified[id(access)] = cached
    return cached[1], cached[0]


async def audit_page(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    access = _access(request)
    args, raw, problem = _filters(request.query)
    offset_raw = request.query.get("offset", "0")
    offset = int(offset_raw) if offset_raw.isdigit() and int(offset_raw) <= 1_000_000 else 0
    shown = " ".join(f"{k}={v}" for k, v in raw.items() if v)
    await record(request, Action.AUDIT_VIEW, detail=(shown or "all")[:400])
    records = [] if problem else await access.list(**args, limit=PAGE + 1, offset=offset)
    verified, verified_at = await _verify(access, fresh=request.query.get("verify") == "1")
    query = "&".join(f"{k}={quote(v)}" for k, v in raw.items() if v)
    context = {
        **_base(request),
        "records": records[:PAGE],
        "more": len(records) > PAGE,
        "offset": offset,
        "page": PAGE,
        "filters": raw,
        "query": query,
        "problem": problem,
        "verified": verified,
        "verified_at": verified_at,
        "actions": ACTION_LABELS,
        "results": RESULT_LABELS,
        "chains": {str(Chain.ACCESS): "접속기록", str(Chain.ACCOUNTS): "계정 변경"},
        "this_month": datetime.now(SEOUL).strftime("%Y-%m"),
    }
    return render(request, "admin_audit.html", context, status=400 if problem else 200)


async def audit_export(request: web.Request) -> web.StreamResponse:
    """The CSV of a date range (the form's filters), once its reason is given and recorded."""
    refused = await _admin(request)
    if refused is not None:
        return refused
    form = await request.post()
    args, raw, problem = _filters(form)
    reason = " ".join(str(form.get("reason", "")).split())[:300]
    if not reason:
        problem = problem or "내려받는 사유를 적어 주세요. 사유는 접속기록에 함께 남습니다."
    if problem:
        return error_page(request, 400, problem)
    access = _access(request)
    target = f"{raw['since'] or '처음'}~{raw['until'] or '현재'}"
    await record(request, Action.AUDIT_EXPORT, target=target, detail=reason)
    body = await access.export_csv(**args)
    name = f"access-records-{raw['since'] or 'start'}-{raw['until'] or 'now'}.csv"
    return web.Response(
        body=body,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/accounts", accounts_page)
    app.router.add_post("/admin/accounts", add_account)
    app.router.add_get("/admin/accounts/{username}", account_page)
    app.router.add_post("/admin/accounts/{username}", account_action)
    app.router.add_get("/admin/audit", audit_page)
    app.router.add_post("/admin/audit/export", audit_export)
