"""The number plan's fast path for Korean mobiles agrees with phonenumbers."""

from __future__ import annotations

import phonenumbers
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat

from gateway.domain.models import NumberKind
from gateway.domain.numbers import NumberPlan

PLAN = NumberPlan()


@given(subscriber=st.from_regex(r"\A[0-9]{8}\Z"),
       form=st.sampled_from(["010{}", "010-{a}-{b}", "+8210{}", "8210{}", "+82 10 {a} {b}", "9010{}", "9,010-{a}-{b}"]))
def test_mobile_fast_path_matches_phonenumbers(subscriber: str, form: str) -> None:
    raw = form.format(subscriber, a=subscriber[:4], b=subscriber[4:])
    got = NumberPlan().classify(raw)
    number = phonenumbers.parse("010" + subscriber, "KR")
    assert phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE
    assert got.kind is NumberKind.MOBILE
    assert got.e164 == phonenumbers.format_number(number, PhoneNumberFormat.E164)


def test_other_numbers_still_go_through_phonenumbers() -> None:
    assert PLAN.classify("02-2133-1234").kind is NumberKind.LANDLINE
    assert PLAN.classify("011-234-5678").kind is NumberKind.MOBILE  # old 01X prefix: phonenumbers decides
    assert PLAN.classify("+1 650 253 0000").kind is NumberKind.INTERNATIONAL
    assert PLAN.classify("2001").kind is NumberKind.EXTENSION
