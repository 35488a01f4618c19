"""The inbox: the queues a person may see, their counts, and each queue's threads.

`GET /` is the whole page (queue tabs with counts, the views, the list); `GET /inbox/list` is the
list alone, an htmx fragment that console.js reloads when a live event arrives (with the tabs'
counts swapped out of band). Every list shown is an access record (VIEW_INBOX, target = queue);
asking for a queue one may not see is answered 403 and recorded as DENIED.

Also the helpers the thread pages share: the Desk and the queue names from the console's
dependencies, staff names, and the Seoul-time filter of the templates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import jinja2
from aiohttp import web

from gateway.console.app import DEPS, TEMPLATES, account_of, error_page, is_htmx, record, render
from gateway.domain.audit import Action
from gateway.domain.numbers import display
from gateway.domain.records import SEOUL
from gateway.domain.staff import Account
from gateway.inbox.desk import Desk, ThreadPage

# The views of a queue, in the order of their tabs: the Desk's view name -> the label staff read.
VIEWS: dict[str, str] = {
    "open": "전체",
    "unread": "읽지 않음",
    "waiting": "오래 기다림",
    "mine": "내 담당",
    "closed": "종결",
}
PAGE_SIZE = 50
MAX_OFFSET = 100_000  # deeper than any real inbox; bounds what a crafted URL can ask for
NO_QUEUES = "볼 수 있는 문자함이 없습니다. 관리자에게 문자함 권한을 요청해 주세요."


class Refused(Exception):
    """A page's answer decided early (403, 404, ...): the handler returns `response`."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def desk_of(request: web.Request) -> Desk:
    desk = request.app[DEPS].extras.get("desk")
    if desk is None:
        raise Refused(error_page(request, 503, "문자함을 사용할 수 없습니다 (설정되지 않음)."))
    assert isinstance(desk, Desk)
    return desk


def queue_names(request: web.Request) -> dict[str, str]:
    """{queue id: Korean name} from the routing rules' `queues:` (in the file's order)."""
    names = request.app[DEPS].extras.get("queue_names")
    if names is None:
        return {}
    return dict(names() if callable(names) else names)


def visible_queues(account: Account, names: Mapping[str, str]) -> list[str]:
    return [q for q in names if account.may_see(q)]


# Display names change rarely; every list refresh (one per live event per open page) reading all
# accounts from SQL did not: kept for a few seconds per app.
NAMES_TTL_S = 5.0
_NAMES: web.AppKey[dict[str, Any]] = web.AppKey("console_staff_names", dict)


async def staff_names(request: web.Request) -> dict[str, str]:
    """User name -> display name, for "claimed by" and the staff entries of a conversation."""
    cache = request.app.get(_NAMES)
    now = time.monotonic()
    if cache is not None and now - cache["at"] < NAMES_TTL_S:
        return dict(cache["names"])
    names = {a.username: a.display_name for a in await request.app[DEPS].directory.accounts()}
    if cache is not None:
        cache.update(at=now, names=names)
    return names


def seoul_time(epoch: float | None) -> str:
    """ "12-03 14:05" in Seoul time ("" for none): staff read local time, the year is implied."""
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, SEOUL).strftime("%m-%d %H:%M")


def seoul_full(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, SEOUL).strftime("%Y-%m-%d %H:%M:%S")


async def deny(request: web.Request, *, subject: str = "", target: str = "", detail: str = "") -> web.Response:
    """Record the attempt (DENIED) and answer 403."""
    await record(request, Action.DENIED, subject=subject, target=target, result="denied", detail=detail)
    return error_page(request, 403, "이 문자함을 볼 권한이 없습니다.")


def _offset(request: web.Request) -> int:
    raw = request.query.get("offset", "0") or "0"
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        raise Refused(error_page(request, 400, "쪽 번호가 올바르지 않습니다."))
    return int(raw)


async def _list_context(request: web.Request) -> dict[str, Any]:
    """What the page and the fragment show; records the list view (or the denied attempt)."""
    account = account_of(request)
    names = queue_names(request)
    queues = visible_queues(account, names)
    queue = request.query.get("queue", "")
    if not queue and queues:
        # The first queue with open threads (else the first): what a person opening the
        # console wants to see.
        open_counts = await desk_of(request).counts(queues)
        queue = next((q for q in queues if open_counts.get(q, {}).get("open")), queues[0])
    view = request.query.get("view", "open") or "open"
    if view not in VIEWS:
        raise Refused(error_page(request, 400, "알 수 없는 보기입니다."))
    offset = _offset(request)
    if not queues and not request.query.get("queue"):
        return {"queues": [], "names": names, "queue": "", "view": view, "no_queues": NO_QUEUES, "oob": False}
    if not account.may_see(queue):
        raise Refused(await deny(request, target=queue[:100], detail="inbox"))
    if queue not in names:
        raise Refused(error_page(request, 404, "없는 문자함입니다."))
    desk = desk_of(request)
    await record(request, Action.VIEW_INBOX, target=queue, detail=view)
    page: ThreadPage = await desk.open_threads(
        [queue], view=view, staff=account.username, offset=offset, count=PAGE_SIZE
    )
    counts = await desk.counts(queues)
    return {
        "queues": queues,
        "names": names,
        "queue": queue,
        "view": view,
        "views": VIEWS,
        "page": page,
        "counts": counts,
        "staff": await staff_names(request),
        "offset": offset,
        "page_size": PAGE_SIZE,
        "no_queues": "",
        "oob": False,
    }


async def inbox_page(request: web.Request) -> web.Response:
    try:
        context = await _list_context(request)
    except Refused as refused:
        return refused.response
    return render(request, "inbox.html", context)


async def inbox_list(request: web.Request) -> web.Response:
    """The list alone (htmx), with the queue tabs' counts out of band."""
    try:
        context = await _list_context(request)
    except Refused as refused:
        return refused.response
    if not context["queues"]:
        return render(request, "inbox.html", context) if not is_htmx(request) else error_page(request, 403, NO_QUEUES)
    return render(request, "_inbox_list.html", {**context, "oob": True})


async def inbox_counts(request: web.Request) -> web.Response:
    """The queue tabs alone, for an event in a queue other than the one shown: counts only (no
    citizen's data), so no access record."""
    account = account_of(request)
    names = queue_names(request)
    queues = visible_queues(account, names)
    view = request.query.get("view", "open")
    try:
        counts = await desk_of(request).counts(queues) if queues else {}
    except Refused as refused:
        return refused.response
    return render(
        request,
        "_queue_tabs.html",
        {
            "queues": queues,
            "names": names,
            "counts": counts,
            "queue": request.query.get("queue", ""),
            "view": view if view in VIEWS else "open",
            "oob": False,
        },
    )


def install_filters(env: jinja2.Environment) -> None:
    """The inbox and thread templates' filters, on the console's (shared) environment."""
    filters: dict[str, Callable[..., Any]] = env.filters
    filters.setdefault("seoul", seoul_time)
    filters.setdefault("seoul_full", seoul_full)
    filters.setdefault("thousands", lambda n: f"{int(n):,}")
    filters.setdefault("local_number", display)  # the city's own numbers (not personal data)


def add_routes(app: web.Application) -> None:
    install_filters(app[TEMPLATES])
    app[_NAMES] = {"at": float("-inf"), "names": {}}
    app.router.add_get("/", inbox_page)
    app.router.add_get("/inbox/list", inbox_list)
    app.router.add_get("/inbox/counts", inbox_counts)
