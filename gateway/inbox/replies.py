"""Text messages to a citizen in their conversation: an SMS/LMS from the city number they texted.

Staff replies (the intake's API), and the rules' automatic replies and opt-out confirmations
(the worker, from a citizen's inbound notification job) all go the same way: admitted through
the outbox guard (opt-out, dedupe, rate limit), queued on `sms` and written to the thread, in
one atomic step. The text is sealed in both (the job's bound to its key, the thread's to the
thread id): a staff answer quotes the citizen, and dead letters keep a job for days. The
dedupe key is the action ("auto_reply:<message id>", "reply:<id>"), so a
retried notification job finds its reply a duplicate instead of sending it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import lru_cache

from gateway.domain.models import SmsRequest
from gateway.domain.smstext import choose
from gateway.infra.crypto import Sealer
from gateway.infra.rediskeys import thread_messages_key
from gateway.messaging.jobs import Enqueuer, encode_message
from gateway.outbox.guard import Admission, Outbox, QueuedMessage, Verdict
from gateway.ports import QueuePut

# The action of a message's automatic reply: "auto_reply:<provider message id>".
AUTO_REPLY = "auto_reply"

# Auto-replies and opt-out confirmations are the rules' few fixed texts: made EUC-KR-safe once,
# not on every message. Staff replies are not cached.
_choose_rule_text = lru_cache(maxsize=256)(choose)


class Replies:
    """SMS/LMS replies in a thread (see the module docstring)."""

    def __init__(self, outbox: Outbox, enqueuer: Enqueuer | None, sealer: Sealer, sms_provider: str) -> None:
        self.outbox = outbox
        self.enqueuer = enqueuer
        self.sealer = sealer
        self.sms_provider = sms_provider  # "" when no SMS provider is configured

    def outgoing(
        self, tid: str, to: str, city_number: str, text: str, action: str, *, rule_text: bool = False, staff: str = ""
    ) -> tuple[Admission, QueuePut] | None:
        """The reply's admission, and its job with the thread entry to add once admitted. None
        when nothing can be sent (no broker or no SMS provider)."""
        if self.enqueuer is None or not self.sms_provider:
            return None
        kind, safe = _choose_rule_text(text) if rule_text else choose(text)
        key = self.outbox.key_for("sms", tid, action, to)
        sms = SmsRequest(key, to, city_number, safe, safe.split("\n", 1)[0][:20], kind)
        message = QueuedMessage(key, "sms", tid, action, to, self.sms_provider, sms=sms)
        put = self.enqueuer.prepare(
            "sms",
            encode_message(message, self.sealer),
            stream_key=thread_messages_key(tid),
            stream_fields=(
                ("dir", "out"),
                ("at", f"{time.time():.3f}"),
                ("text", self.sealer.seal(safe, tid.encode())),
                ("action", action),
                *((("staff", staff),) if staff else ()),  # who answered (the console's conversation)
            ),
        )
        return Admission("sms", tid, action, to), put

    async def send(
        self, tid: str, to: str, city_number: str, text: str, action: str, *, rule_text: bool = False, staff: str = ""
    ) -> str:
        """Admit, queue and record a reply in one step: "queued", "not_configured", or the
        guard's verdict ("opted_out", "duplicate", "rate_limited", "store_unavailable", ...)."""
        outgoing = self.outgoing(tid, to, city_number, text, action, rule_text=rule_text, staff=staff)
        if outgoing is None or self.enqueuer is None:
            return "not_configured"
        verdict = await self.outbox.admit(outgoing[0], then=outgoing[1])
        if verdict is not Verdict.ADMITTED:
            return verdict.value
        self.enqueuer.enqueued += 1
        return "queued"

    async def supersede(self, tid: str, to: str, message_ids: Iterable[str]) -> int:
        """Staff answered first: the automatic replies of these messages that the worker has not
        sent yet are not sent at all (a late "received" after a real answer only confuses). Their
        guard claims are taken now, with nothing queued, so the worker finds them duplicates.
        Returns how many were still pending."""
        pending = 0
        for message_id in message_ids:
            verdict = await self.outbox.admit(Admission("sms", tid, f"{AUTO_REPLY}:{message_id}", to))
            pending += verdict is Verdict.ADMITTED
        return pending
