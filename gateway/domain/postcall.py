"""After-call messaging policy: post-call content, the Alimtalk call notice for phones that
cannot show lettering, and the SMS/LMS text when Alimtalk cannot reach the citizen.

Pure: records and rules in, plans out. Times are epoch seconds; local time is Asia/Seoul.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.domain.directory import Department
from gateway.domain.models import Button, CallRecord, Direction, Disposition, NumberKind
from gateway.domain.optout import DEFAULT_WORDS, OptoutWords

SEOUL = ZoneInfo("Asia/Seoul")


@dataclass(frozen=True, slots=True)
class Content:
    """One department's post-call content set (card news, a video, a policy link)."""

    id: str
    title: str
    text: str
    buttons: tuple[Button, ...] = ()
    image: str = ""


@dataclass(frozen=True, slots=True)
class MessagingRules:
    min_talk_seconds: int = 10
    frequency_cap_days: int = 7  # at most one post-call message per citizen and department per window
    quiet_start: time = time(21, 0)  # promotional content waits from here ...
    quiet_end: time = time(8, 0)  # ... to here (Asia/Seoul)
    device_memory_days: int = 30  # how long "cannot show lettering" is remembered per citizen
    call_notice_template: str = "CALL_NOTICE"  # Alimtalk template: who called and why
    postcall_template: str = "POSTCALL"  # Alimtalk template: the post-call content
    provider_resend: bool = True  # ask the Alimtalk provider for SMS/LMS fallback (대체발송)
    contents: Mapping[str, Content] = field(default_factory=dict)
    # Citizens' opt-out/opt-in words as they write them (keywords, polite endings, carrier tags:
    # gateway.domain.optout), the confirmations they get, and the how-to sent with the automatic
    # reply of a message that asks about opting out.
    optout_words: OptoutWords = DEFAULT_WORDS
    optout_confirmation: str = "수신거부가 처리되었습니다. 다시 받으시려면 '수신동의'를 보내주세요."
    optin_confirmation: str = "수신동의가 처리되었습니다. 그만 받으시려면 '수신거부'를 보내주세요."
    optout_help: str = "문자를 그만 받으시려면 이 번호로 '수신거부'라고만 보내주세요."


@dataclass(frozen=True, slots=True)
class PostcallPlan:
    content: Content
    department: Department
    not_before: float | None  # epoch; None = send now, else deferred out of quiet hours


@dataclass(frozen=True, slots=True)
class PostcallSkip:
    reason: str


def in_quiet_hours(at: float, rules: MessagingRules) -> bool:
    local = datetime.fromtimestamp(at, SEOUL).time()
    start, end = rules.quiet_start, rules.quiet_end
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(at: float, rules: MessagingRules) -> float:
    """The first moment at or after `at` outside quiet hours (epoch seconds)."""
    if not in_quiet_hours(at, rules):
        return at
    local = datetime.fromtimestamp(at, SEOUL)
    end = local.replace(hour=rules.quiet_end.hour, minute=rules.quiet_end.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return end.timestamp()


def plan_postcall(
    record: CallRecord, department: Department | None, rules: MessagingRules, now: float
) -> PostcallPlan | PostcallSkip:
    """Whether this finished call earns the department's post-call content, and when."""
    if record.direction is not Direction.OUTBOUND:
        return PostcallSkip(record.direction.value)
    if record.disposition is not Disposition.ANSWERED:
        return PostcallSkip("not_answered")
    if record.party_kind is not NumberKind.MOBILE:
        return PostcallSkip(record.party_kind.value)
    if record.talk_seconds < rules.min_talk_seconds:
        return PostcallSkip("short_call")
    if department is None:
        return PostcallSkip("unknown_extension")
    if not department.postcall:
        return PostcallSkip("no_content")
    content = rules.contents.get(department.postcall)
    if content is None:
        return PostcallSkip("content_missing")
    deferred = in_quiet_hours(now, rules)
    return PostcallPlan(content, department, quiet_hours_end(now, rules) if deferred else None)


def call_notice_variables(
    organisation: str, department: str, guide: str, caller_number: str, display_number: str
) -> tuple[tuple[str, str], ...]:
    """Template parameters of the Alimtalk call notice (the lettering an iPhone cannot show)."""
    del caller_number  # the template shows the local form
    return (("organisation", organisation), ("department", department), ("guide", guide), ("callback", display_number))


def call_notice_sms(lettering_text: str, display_number: str) -> str:
    """The SMS twin of the call notice: exactly what the lettering would have shown, plus the
    number to call back (it fits in one 90-byte SMS for the usual texts)."""
    text = lettering_text.rstrip(". ")
    return f"{text}. 문의 {display_number}" if display_number else f"{text}."


def postcall_variables(content: Content, department: Department) -> tuple[tuple[str, str], ...]:
    return (
        ("organisation", department.organisation),
        ("department", department.name),
        ("title", content.title),
        ("text", content.text),
    )


def postcall_sms(content: Content, department: Department) -> str:
    links = " ".join(b.url for b in content.buttons)
    return f"[{department.organisation}] {department.name} {content.title}\n{content.text}" + (
        f"\n{links}" if links else ""
    )
