"""The telecom team's status page: the gateway's parts at a glance, the last decisions, the
answer-rate chart and the report downloads.

For the telecom team and admins (`Account.sees_status`); anyone else gets a 403 page and a
DENIED access record. The page shows no citizen's data (numbers in the last decisions are
masked when they enter the buffer, `gateway.infra.recent`), so viewing it is not recorded;
each report download is (Action.REPORT: which report, which period, which format).

Live part: `GET /status/fragment`, the health and decisions block alone, which the page polls
every 10 s with htmx (one request per open status page, not per message: a handful of operators
at most; the live SSE stream is for the inbox). The chart and the download forms are rendered
once per page load: the roll-ups change a few times a minute at most.

Parts read from `ConsoleDeps`: `health()` (the gateway's /health document), and in `extras`:
`recent` (a `RecentDecisions`), `records_store` (a `RecordsStore`, may be absent),
`queue_names` / `department_names` (callables returning {id: name}).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from gateway.console import answerchart
from gateway.console.app import DEPS, account_of, error_page, record, render
from gateway.domain.audit import Action
from gateway.domain.records import SEOUL
from gateway.errors import GatewayError
from gateway.infra.recent import Decision, RecentDecisions
from gateway.records import reports
from gateway.records.render import LETTERING_NAMES, Sheet, inbox_sheet, rate_sheet, render_csv, render_xlsx

log = logging.getLogger(__name__)

DECISIONS_SHOWN = 50
CHART_DAYS = 30
RATE_TITLES = {"department": "부서별 응답률", "day": "일별 응답률", "lettering": "문자 결과별 응답률"}
INBOX_TITLES = {"queue": "대기열별", "rule": "분류 규칙별", "tag": "태그별", "day": "일별"}
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_REPORT_DAYS = 366 * 2
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# ----------------------------------------------------------------------------- view model

# state of a part: "ok" (green), "warn" (amber), "bad" (red), "off" (not configured / unknown)
OK, WARN, BAD, OFF = "ok", "warn", "bad", "off"
STATE_LABELS = {OK: "정상", WARN: "주의", BAD: "이상", OFF: "없음"}


@dataclass
class Part:
    """One box of the page: a Korean title, its state and its rows (label, value, state)."""

    title: str
    state: str = OK
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    note: str = ""

    def add(self, label: str, value: object, state: str = "") -> None:
        self.rows.append((label, "-" if value is None or value == "" else str(value), state))

    def worst(self, state: str) -> None:
        order = {OFF: 0, OK: 1, WARN: 2, BAD: 3}
        if order.get(state, 0) > order.get(self.state, 0):
            self.state = state


def seoul(epoch: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(float(epoch), SEOUL).strftime(fmt)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}초 전"
    if s < 3600:
        return f"{s // 60}분 전"
    return f"{s // 3600}시간 {s % 3600 // 60}분 전"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    return f"{days}일 {hours}시간" if days else f"{hours}시간 {s // 60}분"


def pbx_parts(health: Mapping[str, Any]) -> Part:
    part = Part("교환기(PBX) 연결")
    links = health.get("pbx") or []
    if not links:
        part.state = OFF
        part.note = "연결된 교환기가 없습니다."
    for link in links:
        up = bool(link.get("authenticated"))
        state = OK if up else BAD
        part.worst(state)
        where = f" ({link['host']}:{link.get('port', '')})" if link.get("host") else ""
        status = "로그인됨" if up else ("연결됨, 로그인 안 됨" if link.get("connected") else "끊김")
        part.add(f"{link.get('name', '?')}{where}", status, state)
        since = link.get("since") or link.get("connected_since")
        if since:
            part.add("  연결 시각", seoul(since))
        part.add("  마지막 이벤트", ago(link.get("seconds_since_last_event")))
        reconnects = int(link.get("reconnects") or 0)
        part.add("  재연결 횟수", reconnects, WARN if reconnects else "")
        if link.get("pbx_uptime") is not None:
            part.add("  교환기 가동 시간", duration(link.get("pbx_uptime")))
        if link.get("last_error") and not up:
            part.add("  마지막 오류", f"{link['last_error']} ({seoul(link.get('last_error_at'))})", BAD)
    return part


def redis_part(health: Mapping[str, Any]) -> Part:
    redis = health.get("redis") or {}
    part = Part("Redis")
    if redis.get("reachable"):
        latency = redis.get("latency_ms")
        slow = latency is not None and float(latency) > 50
        part.worst(WARN if slow else OK)
        part.add("응답", "정상", OK)
        part.add("지연 시간", f"{float(latency):.1f} ms" if latency is not None else None, WARN if slow else "")
    else:
        part.state = BAD
        part.add("응답", "연결 안 됨", BAD)
        part.add("오류", redis.get("error"), BAD)
    return part


def rules_part(health: Mapping[str, Any]) -> Part:
    rules = health.get("rules") or {}
    part = Part("규칙 파일")
    part.add("버전 (directory/lettering)", rules.get("version"))
    part.add("분류 규칙 (routing.yaml)", rules.get("routing_version") or "없음")
    if "console_version" in rules:
        part.add("답변·매뉴얼 (console.yaml)", rules.get("console_version") or "없음")
    part.add("불러온 시각", seoul(rules.get("loaded_at")))
    error = str(rules.get("last_error") or "")
    if error:
        part.state = BAD
        part.note = "마지막 다시 불러오기가 실패해 이전 규칙으로 운영 중입니다."
        part.add("마지막 오류", error, BAD)
    else:
        part.add("마지막 오류", "없음", OK)
    return part


# The gateway's job queues (`gateway.messaging.jobs`), as the telecom team knows them.
JOB_QUEUE_LABELS = {
    "call_notice": "통화 알림(알림톡)",
    "postcall": "통화 후 안내",
    "sms": "문자 발송",
    "inbound": "받은 문자 처리",
}


def queues_part(health: Mapping[str, Any], names: Mapping[str, str]) -> Part:
    queues = health.get("queues") or {}
    part = Part("작업 대기열")
    if queues.get("error"):
        part.state = BAD
        part.add("읽기 오류", queues["error"], BAD)
    failed = int(queues.get("enqueue_failed") or 0)
    part.add("넣은 작업", queues.get("enqueued", 0))
    part.add("넣기 실패", failed, BAD if failed else "")
    part.worst(BAD if failed else OK)
    backlog = queues.get("backlog") or {}
    for queue, b in backlog.items():
        if queue == "total" or not isinstance(b, Mapping):
            continue
        waiting = int(b.get("ready") or 0)
        state = WARN if waiting > 100 else ""
        part.worst(state or OK)
        label = JOB_QUEUE_LABELS.get(queue, names.get(queue, queue))
        oldest = b.get("oldest_delayed_age_s")
        extra = f", 가장 오래된 지연 {duration(oldest)}" if oldest else ""
        part.add(f"{label}", f"대기 {waiting} · 지연 {b.get('delayed', 0)} · 보유 {b.get('held', 0)}{extra}", state)
    for queue, count in (queues.get("dead_letters") or {}).items():
        n = int(count or 0)
        if n:
            part.worst(BAD)
        part.add(f"실패 보관함 {JOB_QUEUE_LABELS.get(queue, names.get(queue, queue))}", n, BAD if n else "")
    return part


def providers_part(health: Mapping[str, Any]) -> Part:
    providers = health.get("providers") or {}
    part = Part("발송 사업자")
    kinds = (("lettering", "통화 중 문자"), ("messaging", "알림톡·문자"))
    for kind, label in kinds:
        for name, st in (providers.get(kind) or {}).items():
            circuit = str(st.get("circuit", "none"))
            rate = float(st.get("error_rate") or 0.0)
            state = {"open": BAD, "half_open": WARN}.get(circuit, WARN if rate >= 0.2 else OK)
            part.worst(state)
            # Lettering carriers have no circuit (one try while the phone rings): no circuit shown.
            shown = {"open": "차단(열림)", "half_open": "시험 중", "closed": "정상"}.get(circuit, "")
            counts = f"최근 {st.get('recent', 0)}건 중 오류 {st.get('recent_errors', 0)}건 ({rate * 100:.0f}%)"
            part.add(f"{label} {name}", f"회로 {shown} · {counts}" if shown else counts, state)
    if not part.rows:
        part.state = OFF
        part.note = "설정된 사업자가 없습니다."
    return part


def records_part(health: Mapping[str, Any], has_store: bool) -> Part:
    records = health.get("records") or {}
    part = Part("기록 저장")
    if not records:
        part.state = OFF if not has_store else OK
        part.note = "기록 전송 상태가 없습니다." if not has_store else ""
    dropping = bool(records.get("dropping"))
    dropped = int(records.get("dropped") or 0)
    errors = int(records.get("errors") or 0)
    if records:
        part.add("전송 대기", records.get("pending", 0), WARN if int(records.get("pending") or 0) > 1000 else "")
        part.add("보낸 기록", records.get("emitted", 0))
        part.add("버린 기록", dropped, BAD if dropped else "")
        part.add("오류", errors, WARN if errors else "")
        part.worst(BAD if dropping or dropped else WARN if errors else OK)
    if dropping:
        part.note = "Redis가 오래 응답하지 않아 기록이 버려지고 있습니다."
    part.add("기록 저장소(보고서)", "연결됨" if has_store else "설정 안 됨", OK if has_store else WARN)
    return part


# --------------------------------------------------------------------------- decisions

SKIP_REASONS = {
    "lettering_disabled": "기능 꺼짐",
    "inbound": "걸려 온 전화",
    "internal": "내부 통화",
    "not_dialed": "발신 안 됨",
    "landline": "유선 전화",
    "special": "대표·인터넷 번호",
    "international": "국제 번호",
    "invalid": "잘못된 번호",
    "extension": "내선",
    "unknown_extension": "등록 안 된 내선",
    "no_provider": "사업자 없음",
    "no_carrier": "사업자 없음",
    "opted_out": "수신 거부",
    "duplicate": "중복",
    "rate_limited": "발송 제한",
    "store_unavailable": "저장소 장애",
    "invalid_recipient": "받는 번호 오류",
    "known_no_lettering": "미지원 단말(알림톡)",
    "capped": "발송 횟수 제한",
    "leased": "다른 게이트웨이가 처리 중",
    "owner_died": "처리하던 게이트웨이 중단",
}
RESULT_OK = frozenset(
    {"delivered", "sent", "queued", "accepted", "ok", "answered", "connected", "authenticated", "resynced"}
)
RESULT_LABELS = {
    "accepted": "접수",
    "duplicate": "중복(이미 접수)",
    "queued": "발송 대기",
    "sent": "발송됨",
    "delivered": "전달됨",
    "failed": "실패",
    "rejected": "거절됨",
    "timeout": "응답 없음",
    "opted_out": "수신 거부",
    "connected": "연결됨",
    "authenticated": "로그인됨",
    "auth_failed": "로그인 실패",
    "lost": "끊김",
    "resynced": "통화 목록 맞춤",
    "pbx_restarted": "교환기 재시작",
}
EVENT_LABELS = {
    "lettering": "통화 중 문자",
    "skipped": "문자 생략",
    "inbound": "문자 수신",
    "reply": "직원 답장",
    "closed": "종결",
    "replied": "답장 발송",
    "sent": "발송",
    "sms": "문자 발송",
    "postcall": "통화 후 안내",
    "alimtalk": "알림톡",
    "notified": "알림",
    "pbx": "교환기",
}


@dataclass(frozen=True, slots=True)
class DecisionRow:
    at: str
    kind: str
    text: str
    result: str
    state: str


def decision_row(d: Decision, queue_names: Mapping[str, str] | None = None) -> DecisionRow:
    """A decision in one line of Korean, its result and state (ok / warn / bad); inbox queues
    by the names staff know them by (`queue_names`)."""
    g = d.get
    result = g("result") or g("status") or g("state")
    state = OK if result in RESULT_OK else BAD if result in ("failed", "error", "rejected", "timeout") else WARN
    if d.event == "lettering":
        text = f"{g('pbx')} 통화 {g('call')} 내선 {g('extension')} → {g('to')} ({g('provider')})"
        result = LETTERING_NAMES.get(result, result) + (f": {g('detail')}" if g("detail") else "")
    elif d.event == "skipped":
        reason = g("reason")
        text = f"{g('pbx')} 통화 {g('call')}" + (f" → {g('to')}" if g("to") else "")
        result, state = f"생략: {SKIP_REASONS.get(reason, reason)}", WARN
    elif d.event == "inbound":
        queue = g("queue")
        named = f"{queue_names[queue]}({queue})" if queue_names and queue in queue_names else queue
        text = f"{g('provider')} {g('message_id')} → 대기열 {named} (규칙 {g('rule') or '-'})"
        if g("optout"):
            text += f", 수신거부 {g('optout')}"
        state = OK if result in ("accepted", "duplicate") else WARN
    elif d.event in ("reply", "replied", "closed"):
        who = f"{g('staff')} " if g("staff") else ""
        to = f" → {g('to')}" if g("to") else ""
        text = f"{who}대화 {g('thread')} {g('action')}{to}".strip()
        if d.event == "closed":
            result, state = "종결됨", OK
    elif d.event == "pbx":
        text = f"{g('pbx')} {g('detail')}".strip()
        state = OK if result in RESULT_OK else BAD if result in ("lost", "auth_failed") else WARN
    else:
        bits = [g(k) for k in ("pbx", "call", "thread", "queue", "action", "channel", "purpose", "content", "sink")]
        text = " ".join(b for b in bits if b)
        if g("to"):
            text += f" → {g('to')}"
    shown = RESULT_LABELS.get(result, result) if d.event not in ("lettering", "skipped") else result
    return DecisionRow(seoul(d.at, "%m-%d %H:%M:%S"), EVENT_LABELS.get(d.event, d.event), text, shown or "-", state)


# ------------------------------------------------------------------------------ handlers


def _names(extras: Mapping[str, Any], key: str) -> dict[str, str]:
    get = extras.get(key)
    if not callable(get):
        return {}
    try:
        names = get()
    except Exception:  # a names lookup must never take the status page down
        log.exception("console status: %s failed", key)
        return {}
    return dict(names) if isinstance(names, Mapping) else {}


async def _allowed(request: web.Request) -> web.Response | None:
    """None for the telecom team and admins; else the 403 page, the attempt recorded."""
    account = account_of(request)
    if account.sees_status:
        return None
    await record(request, Action.DENIED, target=request.path, result="denied", detail="status page")
    return error_page(request, 403, "상태 페이지는 통신팀과 관리자만 볼 수 있습니다.")


async def live_context(request: web.Request) -> dict[str, Any]:
    deps = request.app[DEPS]
    extras = deps.extras
    health: Mapping[str, Any]
    health_error = ""
    try:
        health = await deps.health()
    except Exception as exc:  # the page must say so, not fail
        log.exception("console status: health failed")
        health, health_error = {}, str(exc) or type(exc).__name__
    queue_names = _names(extras, "queue_names")
    parts = [
        pbx_parts(health),
        redis_part(health),
        rules_part(health),
        queues_part(health, queue_names),
        providers_part(health),
        records_part(health, extras.get("records_store") is not None),
    ]
    recent = extras.get("recent")
    decisions = (
        [decision_row(d, queue_names) for d in recent.last(DECISIONS_SHOWN)]
        if isinstance(recent, RecentDecisions)
        else None
    )
    ready = bool(health.get("ready")) and not health_error
    return {
        "parts": parts,
        "ready": ready,
        "draining": bool(health.get("draining")),
        "uptime": duration(health.get("uptime_s")),
        "health_error": health_error,
        "decisions": decisions,
        "decisions_seen": recent.seen if isinstance(recent, RecentDecisions) else 0,
        "now": seoul(datetime.now(SEOUL).timestamp()),
        "state_labels": STATE_LABELS,
    }


def _today() -> date:
    return datetime.now(SEOUL).date()


async def chart_context(request: web.Request) -> dict[str, Any]:
    store = request.app[DEPS].extras.get("records_store")
    today = _today()
    since, until = answerchart.days_back(today, CHART_DAYS)
    ctx: dict[str, Any] = {
        "has_store": store is not None,
        "chart": None,
        "chart_error": "",
        "chart_since": since.isoformat(),
        "chart_until": until.isoformat(),
        "totals": None,
        "default_month": (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m"),
        "this_month": today.strftime("%Y-%m"),
    }
    if store is None:
        return ctx
    try:
        days = await answerchart.daily_rates(store.engine, since, until)
    except (SQLAlchemyError, OSError, GatewayError) as exc:
        log.warning("console status: answer-rate chart failed: %s", exc)
        ctx["chart_error"] = "기록 저장소를 읽을 수 없어 응답률 그래프를 그리지 못했습니다."
        return ctx
    with_row, without_row = answerchart.totals(days)
    ctx["chart"] = answerchart.svg(days)
    ctx["totals"] = (
        answerchart.describe(with_row, answerchart.LABELS[answerchart.WITH]),
        answerchart.describe(without_row, answerchart.LABELS[answerchart.WITHOUT]),
    )
    return ctx


async def status_page(request: web.Request) -> web.Response:
    if (denied := await _allowed(request)) is not None:
        return denied
    live, chart = await asyncio.gather(live_context(request), chart_context(request))
    return render(request, "status.html", {**live, **chart})


async def status_fragment(request: web.Request) -> web.Response:
    if (denied := await _allowed(request)) is not None:
        return denied
    return render(request, "_status_live.html", await live_context(request))


# ----------------------------------------------------------------------------- downloads


class BadReportRequest(GatewayError):
    http_status = 400


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadReportRequest(
            f"{what} 날짜 '{text[:20]}'를 읽을 수 없습니다. YYYY-MM-DD 형식으로 입력해 주세요."
        ) from None


def _period(request: web.Request) -> tuple[date, date]:
    today = _today()
    default_since, default_until = answerchart.days_back(today, CHART_DAYS)
    since = _day(request.query.get("since") or default_since.isoformat(), "시작")
    until = _day(request.query.get("until") or default_until.isoformat(), "끝")
    if since > until:
        raise BadReportRequest("시작 날짜가 끝 날짜보다 늦습니다.")
    if (until - since).days > MAX_REPORT_DAYS:
        raise BadReportRequest("기간은 2년 이내로 정해 주세요.")
    return since, until


def _month(text: str) -> tuple[date, date]:
    m = _MONTH.match(text)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise BadReportRequest(f"월 '{text[:20]}'을 읽을 수 없습니다. YYYY-MM 형식으로 입력해 주세요.")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def _choice(request: web.Request, key: str, allowed: Mapping[str, str], default: str) -> str:
    value = request.query.get(key, default)
    if value not in allowed:
        raise BadReportRequest(f"'{value[:20]}'은(는) 고를 수 없는 값입니다: {', '.join(allowed)}")
    return value


def _store(request: web.Request) -> Any:
    store = request.app[DEPS].extras.get("records_store")
    if store is None:
        raise web.HTTPNotFound(text="records store not configured")
    return store


def _attachment(body: bytes, content_type: str, filename: str) -> web.Response:
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _xlsx(sheet: Sheet) -> bytes:
    buffer = io.BytesIO()
    render_xlsx(sheet, buffer)
    return buffer.getvalue()


async def _guarded(request: web.Request, work: Callable[[], Any]) -> web.Response:
    """The download, or a Korean error page: no store, a bad period, a database that cannot answer."""
    if (denied := await _allowed(request)) is not None:
        return denied
    try:
        response: web.Response = await work()
        return response
    except web.HTTPNotFound:
        return error_page(request, 404, "기록 저장소가 설정되지 않아 보고서를 만들 수 없습니다.")
    except BadReportRequest as exc:
        return error_page(request, 400, str(exc))
    except SQLAlchemyError as exc:
        log.warning("console report failed: %s", exc)
        return error_page(
            request, 503, "기록 저장소를 읽을 수 없어 보고서를 만들지 못했습니다. 잠시 후 다시 시도해 주세요."
        )


async def answer_rate_download(request: web.Request) -> web.Response:
    """GET /reports/answer-rate?since=&until=&by=day|department|lettering&format=xlsx|csv"""

    async def work() -> web.Response:
        store = _store(request)
        since, until = _period(request)
        by = _choice(request, "by", RATE_TITLES, "day")
        fmt = _choice(request, "format", {"xlsx": "", "csv": ""}, "xlsx")
        rows = await reports.answer_rate(store.engine, since, until, by)  # type: ignore[arg-type]
        names = _names(request.app[DEPS].extras, "department_names") if by == "department" else {}
        sheet = rate_sheet(f"{RATE_TITLES[by]} {since} ~ {until}", rows, by, names)
        if fmt == "csv":  # UTF-8 with a BOM: Excel opens the Hangul right
            body, content_type = ("\ufeff" + render_csv(sheet)).encode("utf-8"), "text/csv"
        else:
            body, content_type = _xlsx(sheet), XLSX
        # Recorded once the file is made, before it is handed over.
        await record(request, Action.REPORT, target="answer-rate", detail=f"answer-rate by {by} {since}~{until} {fmt}")
        return _attachment(body, content_type, f"answer-rate-{by}-{since}_{until}.{fmt}")

    return await _guarded(request, work)


async def inbox_download(request: web.Request) -> web.Response:
    """GET /reports/inbox?month=YYYY-MM&by=queue|rule|tag|day&format=xlsx|pdf"""

    async def work() -> web.Response:
        store = _store(request)
        default = (_today().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        since, until = _month(request.query.get("month") or default)
        by = _choice(request, "by", INBOX_TITLES, "queue")
        fmt = _choice(request, "format", {"xlsx": "", "pdf": ""}, "xlsx")
        rows = await reports.inbox_report(store.engine, since, until, by)  # type: ignore[arg-type]
        names = _names(request.app[DEPS].extras, "queue_names") if by == "queue" else None
        sheet = inbox_sheet(f"당직·민원 문자 처리 현황 ({INBOX_TITLES[by]}) {since} ~ {until}", rows, by, names)
        if fmt == "pdf":
            from gateway.records.pdf import ReportFontMissing, inbox_pdf

            try:  # WeasyPrint takes a second or so: off the event loop
                body = await asyncio.to_thread(inbox_pdf, sheet, rows, by=by, since=since, until=until)
            except ReportFontMissing:
                return error_page(
                    request, 503, "PDF에 쓸 한글 글꼴(fonts-nanum)이 설치되어 있지 않습니다. 엑셀로 받아 주세요."
                )
            content_type = "application/pdf"
        else:
            body, content_type = _xlsx(sheet), XLSX
        await record(request, Action.REPORT, target="inbox", detail=f"inbox by {by} {since:%Y-%m} {fmt}")
        return _attachment(body, content_type, f"inbox-{by}-{since:%Y-%m}.{fmt}")

    return await _guarded(request, work)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/status", status_page)
    app.router.add_get("/status/fragment", status_fragment)
    app.router.add_get("/reports/answer-rate", answer_rate_download)
    app.router.add_get("/reports/inbox", inbox_download)
