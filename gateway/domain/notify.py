"""Who is told when a citizen's message lands in a queue (besides the built-in inbox).

Pure: the notification rules and the duty roster; `officer_at` picks the officer on duty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class Officer:
    name: str
    phone: str  # E.164 mobile


@dataclass(frozen=True, slots=True)
class Shift:
    officer: Officer
    start: float  # epoch seconds, inclusive
    end: float  # exclusive


@dataclass(frozen=True, slots=True)
class QueueSinks:
    webhook_url: str = ""  # the complaint system (or any system) to POST the message to
    webhook_secret_env: str = ""  # HMAC key for the signature, from the environment
    notify_duty_officer: bool = False  # an SMS to the officer on duty


@dataclass(frozen=True, slots=True)
class NotifyRules:
    queues: Mapping[str, QueueSinks] = field(default_factory=dict)
    shifts: tuple[Shift, ...] = ()
    fallback: Officer | None = None  # when no shift covers the moment
    sender: str = ""  # the city's registered number duty SMS come from (E.164)

    def officer_at(self, at: float) -> Officer | None:
        for shift in self.shifts:
            if shift.start <= at < shift.end:
                return shift.officer
        return self.fallback

    def sinks(self, queue: str) -> QueueSinks:
        return self.queues.get(queue, QueueSinks())

    def with_webhook_url(self, url: str) -> NotifyRules:
        """These rules with every queue's webhook sent to `url` instead (the demo's stand-in for
        the complaint system); the secrets and everything else unchanged."""
        queues = {
            name: replace(sinks, webhook_url=url) if sinks.webhook_url else sinks for name, sinks in self.queues.items()
        }
        return replace(self, queues=queues)


def duty_sms(queue_name: str, text: str, thread: str) -> str:
    """What the officer on duty reads: enough to judge urgency, the thread to answer in."""
    preview = " ".join(text.split())
    if len(preview) > 40:
        preview = preview[:39] + "…"
    return f"[당직 알림] {queue_name} 새 문자: {preview} (스레드 {thread})"
