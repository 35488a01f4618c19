"""A thread: the conversation with one citizen, and what staff do with it.

`GET /threads/{id}` shows the conversation (citizen's texts, automatic replies, staff answers with
their delivery state, private notes, events), the masked number with a "번호 보기" button, claim /
release / hand over, the answer box with its live byte counter, the rules' canned answers and
duty manual, the note form, tags and closing with an outcome.

Every view is an access record (VIEW_THREAD, subject = thread id, target = queue) and every action
records its own (CLAIM, HANDOVER, REPLY, NOTE, TAG, CLOSE, REVEAL_NUMBER; never a text), written
before the action; an action the store refuses is recorded again with result "failed" and the
cause. A thread of a queue the person may not see is answered 403 and recorded as DENIED.

Every action is a plain POST form with the CSRF field, so the page works without JavaScript (the
answer is a redirect back to the thread, or the page again with the message and the typed text
kept); with htmx the answer is only the parts that changed, swapped out of band.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.console.app import DEPS, account_of, error_page, is_htmx, record, render
from gateway.console.inbox import Refused, deny, desk_of, queue_names, staff_names
from gateway.domain.audit import Action
from gateway.domain.numbers import display
from gateway.domain.smstext import LMS_MAX_BYTES, SMS_MAX_BYTES, Explanation, explain
from gateway.domain.staff import Account
from gateway.errors import ClaimedByOther, ThreadNotFound
from gateway.inbox.desk import OUTCOMES, Conversation, ThreadSummary
from gateway.inbox.intake import InboundRejected, OptedOut

TID = r"{tid:t[0-9a-f]{20}}"
MAX_ANSWER_CHARS = 4000  # an LMS holds 2,000 bytes; anything longer is a paste gone wrong
OPTED_OUT = "수신거부한 시민에게는 답장을 보낼 수 없습니다."
BLOCKED: dict[str, str] = {
    "opted_out": OPTED_OUT,
    "not_mobile": "휴대전화 번호가 아니어서 문자로 답장할 수 없습니다.",
    "not_configured": "문자 발송이 설정되어 있지 않아 답장을 보낼 수 없습니다.",
}
# Intake.reply's answers other than "queued"/"duplicate" (the outbox guard's verdicts).
NOT_SENT: dict[str, str] = {
    "opted_out": OPTED_OUT,
    "rate_limited": "발송 한도에 걸려 답장을 보내지 못했습니다. 잠시 후 다시 시도해 주세요.",
    "not_configured": BLOCKED["not_configured"],
    "store_unavailable": "저장소에 연결할 수 없어 답장을 보내지 못했습니다. 잠시 후 다시 시도해 주세요.",
}
STATES: dict[str, str] = {"queued": "발송 대기", "sent": "발송됨", "delivered": "전달됨", "failed": "발송 실패"}


def claimed_message(holder: str, names: dict[str, str]) -> str:
    return f"다른 담당자({names.get(holder, holder)})가 처리 중입니다."


def counter_context(text: str) -> dict[str, Any]:
    """The byte counter's fragment context: "SMS 45 / 90 바이트" or "LMS 120 / 2,000 바이트"."""
    ex: Explanation = explain(text)
    limit = SMS_MAX_BYTES if ex.kind == "sms" else LMS_MAX_BYTES
    cut_words = " ".join(ex.cut.split()[:6])
    # An invisible character (a joiner, an odd space) is named by its code point.
    changes = [(ch if ch.isprintable() and not ch.isspace() else f"U+{ord(ch):04X}", after) for ch, after in ex.changes]
    return {"ex": ex, "kind": ex.kind.upper(), "limit": limit, "cut_words": cut_words, "changes": changes}


# ------------------------------------------------------------------ shared steps


async def _permitted(request: web.Request, tid: str, what: str) -> ThreadSummary:
    """The thread's summary when the person may see its queue; else the 403 (recorded) or 404."""
    try:
        summary = await desk_of(request).summary(tid)
    except ThreadNotFound:
        raise Refused(
            error_page(request, 404, "대화를 찾을 수 없습니다. 보관 기간이 지나 지워졌을 수 있습니다.")
        ) from None
    if not account_of(request).may_see(summary.queue):
        raise Refused(await deny(request, subject=tid, target=summary.queue, detail=what))
    return summary


async def _colleagues(request: web.Request, queue: str, me: Account) -> list[Account]:
    """Whom a thread of `queue` may be handed over to: enabled accounts that may see it."""
    people = await request.app[DEPS].directory.accounts()
    return [a for a in people if a.may_see(queue) and not a.disabled and a.username != me.username]


async def _thread_context(
    request: web.Request,
    tid: str,
    *,
    answer: str = "",
    note: str = "",
    flash: str = "",
    number: str = "",
) -> dict[str, Any]:
    """Everything the thread page (or its out-of-band parts) shows."""
    account = account_of(request)
    desk = desk_of(request)
    conv: Conversation = await desk.conversation(tid)
    summary = conv.summary
    names = await staff_names(request)
    guidance = None
    rules = request.app[DEPS].extras.get("console_rules")
    if rules is not None:
        loaded = rules()
        if loaded is not None:
            guidance = loaded.for_thread(summary.rule, summary.tags)
    return {
        "t": summary,
        "conv": conv,
        "messages": conv.messages,
        "blocked": BLOCKED.get(conv.reply_blocked, conv.reply_blocked) if conv.reply_blocked else "",
        "queue_name": queue_names(request).get(summary.queue, summary.queue),
        "staff": names,
        "states": STATES,
        "outcomes": OUTCOMES,
        "colleagues": await _colleagues(request, summary.queue, account),
        "mine": summary.claimed_by == account.username,
        "guidance": guidance,
        "answer": answer,
        "note_text": note,
        "flash": flash,
        "number": number,
        "counter": counter_context(answer),
        "oob": False,
    }


async def _done(
    request: web.Request,
    tid: str,
    *,
    flash: str = "",
    status: int = 200,
    answer: str | None = None,
    note: str | None = None,
    alert: bool = True,
    typed: str = "",
    typed_note: str = "",
) -> web.Response:
    """The answer to an action.

    htmx: the conversation and the side panel out of band, the flash message, and the answer or
    note form when it is to be reset (`answer`/`note` not None; on a refusal they are left alone
    so the typed text stays). Without htmx: back to the thread (303) when all went well, or the
    page again with the message and the typed text (`typed`, `typed_note`)."""
    if not is_htmx(request):
        if not flash or not alert:
            raise web.HTTPSeeOther(f"/threads/{tid}")
        context = await _thread_context(request, tid, answer=typed, note=typed_note, flash=flash)
        return render(request, "thread.html", {**context, "alert": alert}, status=status)
    context = await _thread_context(request, tid, flash=flash)
    context.update(
        oob=True,
        reset_answer=answer is not None,
        reset_note=note is not None,
        alert=alert,
    )
    return render(request, "_thread_update.html", context, status=status)


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _tid(request: web.Request) -> str:
    return request.match_info["tid"]


# ------------------------------------------------------------------ pages


async def thread_page(request: web.Request) -> web.Response:
    tid = _tid(request)
    try:
        summary = await _permitted(request, tid, "view")
    except Refused as refused:
        return refused.response
    await record(request, Action.VIEW_THREAD, subject=tid, target=summary.queue)
    if summary.unread:
        await desk_of(request).mark_read(tid, account_of(request).username)
    context = await _thread_context(request, tid)
    return render(request, "thread.html", {**context, "alert": False})


async def conversation_fragment(request: web.Request) -> web.Response:
    """The conversation alone (console.js reloads it when a live event names this thread)."""
    tid = _tid(request)
    try:
        summary = await _permitted(request, tid, "view")
    except Refused as refused:
        return refused.response
    await record(request, Action.VIEW_THREAD, subject=tid, target=summary.queue, detail="refresh")
    if summary.unread:
        await desk_of(request).mark_read(tid, account_of(request).username)
    context = await _thread_context(request, tid)
    # (flash None: a live refresh leaves the message shown by the person's last action alone)
    context.update(oob=True, reset_answer=False, reset_note=False, alert=False, flash=None)
    return render(request, "_thread_update.html", context)


async def reveal(request: web.Request) -> web.Response:
    """The citizen's whole number: a deliberate click, recorded (REVEAL_NUMBER) before it is shown."""
    tid = _tid(request)
    try:
        summary = await _permitted(request, tid, "reveal")
    except Refused as refused:
        return refused.response
    await record(request, Action.REVEAL_NUMBER, subject=tid, target=summary.queue)
    number = display(await desk_of(request).reveal(tid))
    if is_htmx(request):
        return render(request, "_number.html", {"number": number, "t": summary})
    context = await _thread_context(request, tid, number=number)
    return render(request, "thread.html", {**context, "alert": False})


# ------------------------------------------------------------------ actions


async def claim(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    try:
        summary = await _permitted(request, tid, "claim")
    except Refused as refused:
        return refused.response
    await record(request, Action.CLAIM, subject=tid, target=summary.queue)
    try:
        await request.app[DEPS].intake.claim(tid, account.username)
    except ClaimedByOther as exc:
        await record(
            request, Action.CLAIM, subject=tid, target=summary.queue, result="failed", detail="claimed_by_other"
        )
        return await _done(request, tid, flash=claimed_message(exc.holder, await staff_names(request)), status=409)
    return await _done(request, tid, flash="담당자로 지정되었습니다.", alert=False)


async def release(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    try:
        summary = await _permitted(request, tid, "release")
    except Refused as refused:
        return refused.response
    await record(request, Action.HANDOVER, subject=tid, target=summary.queue, detail="release")
    try:
        await desk_of(request).release(tid, account.username)
    except ClaimedByOther as exc:
        await record(
            request,
            Action.HANDOVER,
            subject=tid,
            target=summary.queue,
            result="failed",
            detail="release: claimed_by_other",
        )
        return await _done(request, tid, flash=claimed_message(exc.holder, await staff_names(request)), status=409)
    return await _done(request, tid, flash="담당을 내려놓았습니다.", alert=False)


async def handover(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    form = await _form(request)
    try:
        summary = await _permitted(request, tid, "handover")
    except Refused as refused:
        return refused.response
    to = form.get("to", "")
    colleagues = {a.username: a for a in await _colleagues(request, summary.queue, account)}
    if to not in colleagues:
        return await _done(request, tid, flash="넘겨받을 담당자를 목록에서 골라 주세요.", status=400)
    force = account.is_admin and form.get("force") == "1"
    await record(
        request, Action.HANDOVER, subject=tid, target=to, detail=f"queue={summary.queue}" + (" force" if force else "")
    )
    try:
        await desk_of(request).handover(tid, account.username, to, force=force)
    except ClaimedByOther as exc:
        await record(request, Action.HANDOVER, subject=tid, target=to, result="failed", detail="claimed_by_other")
        return await _done(request, tid, flash=claimed_message(exc.holder, await staff_names(request)), status=409)
    return await _done(request, tid, flash=f"{colleagues[to].display_name} 님에게 넘겼습니다.", alert=False)


async def reply(request: web.Request) -> web.Response:
    """Answer the citizen (through Intake.reply: the outbox guard, opt-out, dedupe)."""
    tid, account = _tid(request), account_of(request)
    form = await _form(request)
    text = form.get("text", "")
    try:
        summary = await _permitted(request, tid, "reply")
    except Refused as refused:
        return refused.response
    if not text.strip():
        return await _done(request, tid, flash="답장 내용을 입력해 주세요.", status=400, typed=text)
    if len(text) > MAX_ANSWER_CHARS:
        return await _done(
            request, tid, flash=f"답장이 너무 깁니다 ({MAX_ANSWER_CHARS:,}자까지).", status=400, typed=text
        )
    await record(request, Action.REPLY, subject=tid, target=summary.queue)
    # Intake.reply claims the thread before the guard refuses an opted-out citizen: asking first
    # spares the thread a claim that no answer follows (the guard still decides, below).
    if await desk_of(request).opted_out(tid):
        await record(request, Action.REPLY, subject=tid, target=summary.queue, result="failed", detail="opted_out")
        return await _done(request, tid, flash=OPTED_OUT, status=409, typed=text)
    try:
        result = await request.app[DEPS].intake.reply(tid, text, account.username)
    except OptedOut:
        await record(request, Action.REPLY, subject=tid, target=summary.queue, result="failed", detail="opted_out")
        return await _done(request, tid, flash=OPTED_OUT, status=409, typed=text)
    except ClaimedByOther as exc:
        await record(
            request, Action.REPLY, subject=tid, target=summary.queue, result="failed", detail="claimed_by_other"
        )
        return await _done(
            request, tid, flash=claimed_message(exc.holder, await staff_names(request)), status=409, typed=text
        )
    except InboundRejected:
        return await _done(request, tid, flash="답장 내용을 입력해 주세요.", status=400, typed=text)
    if result == "queued":
        return await _done(request, tid, flash="답장을 발송 대기열에 넣었습니다.", answer="", alert=False)
    if result == "duplicate":
        return await _done(
            request, tid, flash="같은 답장을 방금 보냈습니다. 한 번만 발송됩니다.", answer="", alert=False
        )
    await record(request, Action.REPLY, subject=tid, target=summary.queue, result="failed", detail=str(result)[:60])
    message = NOT_SENT.get(str(result), f"답장을 보내지 못했습니다 ({result}).")
    return await _done(request, tid, flash=message, status=409, typed=text)


async def note(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    form = await _form(request)
    text = form.get("text", "")
    try:
        summary = await _permitted(request, tid, "note")
    except Refused as refused:
        return refused.response
    if not text.strip() or len(text) > 2000:
        return await _done(request, tid, flash="메모는 1~2,000자로 입력해 주세요.", status=400, typed_note=text)
    await record(request, Action.NOTE, subject=tid, target=summary.queue)
    try:
        await desk_of(request).note(tid, account.username, text)
    except InboundRejected:
        return await _done(request, tid, flash="메모는 1~2,000자로 입력해 주세요.", status=400, typed_note=text)
    return await _done(request, tid, flash="메모를 남겼습니다.", note="", alert=False)


def _tag_list(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in raw.replace(",", " ").split() if part.strip()))


async def tags(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    form = await _form(request)
    add, remove = _tag_list(form.get("add", "")), _tag_list(form.get("remove", ""))
    try:
        summary = await _permitted(request, tid, "tag")
    except Refused as refused:
        return refused.response
    if not add and not remove:
        return await _done(request, tid, flash="추가할 태그를 입력해 주세요.", status=400)
    await record(request, Action.TAG, subject=tid, target=summary.queue, detail=f"add={len(add)} remove={len(remove)}")
    try:
        await desk_of(request).set_tags(tid, account.username, add=add, remove=remove)
    except InboundRejected:
        await record(request, Action.TAG, subject=tid, target=summary.queue, result="failed", detail="invalid")
        return await _done(
            request, tid, flash="태그는 1~20자, 쉼표 없이, 대화마다 10개까지 붙일 수 있습니다.", status=400
        )
    return await _done(request, tid, flash="태그를 바꿨습니다.", alert=False)


async def close(request: web.Request) -> web.Response:
    tid, account = _tid(request), account_of(request)
    form = await _form(request)
    outcome = form.get("outcome", "")
    try:
        summary = await _permitted(request, tid, "close")
    except Refused as refused:
        return refused.response
    if outcome not in OUTCOMES:
        return await _done(request, tid, flash="종결 결과를 골라 주세요.", status=400)
    await record(request, Action.CLOSE, subject=tid, target=summary.queue, detail=outcome)
    await desk_of(request).close(tid, account.username, outcome)
    return await _done(request, tid, flash=f"종결했습니다 ({OUTCOMES[outcome]}).", alert=False)


async def count(request: web.Request) -> web.Response:
    """The byte counter for the answer box's text (the staff member's own text: no record)."""
    form = await _form(request)
    return render(request, "_counter.html", {"counter": counter_context(form.get("text", "")[: MAX_ANSWER_CHARS * 2])})


def add_routes(app: web.Application) -> None:
    base = f"/threads/{TID}"
    app.router.add_get(base, thread_page)
    app.router.add_get(f"{base}/conversation", conversation_fragment)
    app.router.add_post(f"{base}/reveal", reveal)
    app.router.add_post(f"{base}/claim", claim)
    app.router.add_post(f"{base}/release", release)
    app.router.add_post(f"{base}/handover", handover)
    app.router.add_post(f"{base}/reply", reply)
    app.router.add_post(f"{base}/note", note)
    app.router.add_post(f"{base}/tags", tags)
    app.router.add_post(f"{base}/close", close)
    app.router.add_post(f"{base}/count", count)
    app.router.add_post("/count", count)
