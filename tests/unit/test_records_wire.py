"""The emitter's fast wire form of a fact is `to_wire`'s, and the writer reads it back."""

from __future__ import annotations

import msgpack
import pytest

from gateway.domain.records import CallFact, Fact, SendFact, ThreadFact, to_wire
from gateway.records.emitter import FIELD, pack, wire
from gateway.records.writer import decode

FACTS: list[Fact] = [
    CallFact(
        "city-hall", "1795339616.0", "outbound", "2001", "civil", "ab" * 16, "mobile", "no_answer", "normal",
        1_795_339_616.5, None, 1_795_339_646.5, 30.0, 0.0, "skipped", "landline",
    ),
    CallFact(
        "city-hall", "c2", "outbound", "2001", "civil", "cd" * 16, "mobile", "answered", "normal",
        1.0, 6.0, 40.0, 5.0, 34.0, "delivered", "", "queued", "capped", 2, True,
    ),
    ThreadFact("t1", "received", 1.5, "sms:abc", "sms:abc", "duty", "night-duty", ("소음", "question"), "holiday", True,
               party_hash="ef" * 16, sealed_text="v1.k1.xyz"),
    ThreadFact("t1", "closed", 2.5, "kim:2.5", staff="kim"),
    SendFact("city-hall:c2:postcall:" + "cd" * 16, "postcall", "alimtalk", "sbx", "sent", 3.0, "cd" * 16, "R1"),
]  # fmt: skip


@pytest.mark.parametrize("fact", FACTS, ids=lambda f: type(f).__name__)
def test_the_fast_wire_form_is_to_wire(fact: Fact) -> None:
    assert wire(fact) == to_wire(fact)
    assert decode({FIELD: pack(fact)}) == fact


def test_not_a_fact_is_bad() -> None:
    from gateway.domain.records import BadFact

    for fields in ({FIELD: b"\xc1"}, {}, {FIELD: msgpack.packb([1, 2])}, {FIELD: msgpack.packb({"t": "x"})}):
        with pytest.raises(BadFact):
            decode(fields)
