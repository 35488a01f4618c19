"""Post-call policy with a controllable clock, job payload sealing and the msgpack encoder."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.domain.directory import Department
from gateway.domain.models import (
    AlimtalkRequest,
    Button,
    CallRecord,
    Direction,
    Disposition,
    NumberKind,
    SmsRequest,
)
from gateway.domain.postcall import (
    SEOUL,
    Content,
    MessagingRules,
    PostcallPlan,
    PostcallSkip,
    in_quiet_hours,
    plan_postcall,
    quiet_hours_end,
)
from gateway.infra.crypto import Sealer, SealError
from gateway.messaging.jobs import MsgpackEncoder, decode_message, encode_message
from gateway.outbox.guard import QueuedMessage

DEPT = Department("civil-passport", "한빛시청", "민원여권과", "여권 안내", "+82319002000", "passport-guide")
RULES = MessagingRules(
    contents={
        "passport-guide": Content(
            "passport-guide", "여권 발급 안내", "서류 안내", (Button("확인", "https://x.example/p"),)
        )
    }
)


def seoul(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=SEOUL).timestamp()


def record(
    ended: float,
    *,
    talk: float = 30,
    direction: Direction = Direction.OUTBOUND,
    disposition: Disposition = Disposition.ANSWERED,
    kind: NumberKind = NumberKind.MOBILE,
) -> CallRecord:
    return CallRecord(
        "pbx",
        "1.1",
        direction,
        "2001",
        "+821012345678",
        kind,
        disposition,
        "normal",
        ended - talk - 5,
        ended - talk,
        ended,
        talk,
    )


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        ("2026-11-23T20:59:59", False),
        ("2026-11-23T21:00:00", True),
        ("2026-11-24T03:00:00", True),
        ("2026-11-24T07:59:59", True),
        ("2026-11-24T08:00:00", False),
        ("2026-11-24T12:00:00", False),
    ],
)
def test_quiet_hours_in_seoul(local: str, quiet: bool) -> None:
    assert in_quiet_hours(seoul(local), RULES) is quiet


def test_deferred_to_eight_not_dropped() -> None:
    plan = plan_postcall(record(seoul("2026-11-23T22:15:00")), DEPT, RULES, seoul("2026-11-23T22:15:00"))
    assert isinstance(plan, PostcallPlan)
    assert plan.not_before == seoul("2026-11-24T08:00:00")
    early = plan_postcall(record(seoul("2026-11-24T06:00:00")), DEPT, RULES, seoul("2026-11-24T06:00:00"))
    assert isinstance(early, PostcallPlan) and early.not_before == seoul("2026-11-24T08:00:00")
    day = plan_postcall(record(seoul("2026-11-24T10:00:00")), DEPT, RULES, seoul("2026-11-24T10:00:00"))
    assert isinstance(day, PostcallPlan) and day.not_before is None
    assert quiet_hours_end(seoul("2026-11-24T10:00:00"), RULES) == seoul("2026-11-24T10:00:00")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"talk": 3}, "short_call"),
        ({"direction": Direction.INBOUND}, "inbound"),
        ({"disposition": Disposition.BUSY}, "not_answered"),
        ({"kind": NumberKind.LANDLINE}, "landline"),
    ],
)
def test_no_postcall(kwargs: dict[str, object], reason: str) -> None:
    plan = plan_postcall(
        record(seoul("2026-11-24T10:00:00"), **kwargs),  # type: ignore[arg-type]
        DEPT,
        RULES,
        seoul("2026-11-24T10:00:00"),
    )
    assert isinstance(plan, PostcallSkip) and plan.reason == reason
    assert plan_postcall(record(seoul("2026-11-24T10:00:00")), None, RULES, 0).reason == "unknown_extension"  # type: ignore[union-attr]


def test_payload_seals_the_number_and_round_trips() -> None:
    sealer = Sealer.from_env(Sealer.new_key_spec("k2") + "," + Sealer.new_key_spec("k1"), "KEY")
    sms = SmsRequest("k", "+821012345678", "+82319002000", "안내", "제목", "lms")
    message = QueuedMessage(
        "pbx:1.1:postcall:abc",
        "pbx",
        "1.1",
        "postcall",
        "+821012345678",
        "nhn",
        alimtalk=AlimtalkRequest(
            "pbx:1.1:postcall:abc", "+821012345678", "T1", (("title", "여권"),), (Button("b", "https://x"),), sms
        ),
    )
    payload = encode_message(message, sealer)
    encoded = MsgpackEncoder().encode({"args": [payload]})
    assert b"1012345678" not in encoded  # the number is sealed at rest
    back = decode_message(MsgpackEncoder().decode(encoded)["args"][0], sealer)
    assert back.recipient == "+821012345678" and back.alimtalk is not None
    assert back.alimtalk.fallback is not None and back.alimtalk.fallback.text == "안내"
    assert back.alimtalk.idempotency_key == back.key == message.key
    tampered = dict(payload, key="pbx:1.1:postcall:other")  # the key is bound to the sealed number
    with pytest.raises(SealError):
        decode_message(tampered, sealer)
    with pytest.raises(SealError):
        decode_message(payload, Sealer.from_env(Sealer.new_key_spec("k2"), "KEY"))
