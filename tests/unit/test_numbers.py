"""The number plan's fast path for Korean mobiles agrees with phonenumbers."""

from __future__ import annotations

import phonenumbers
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat

from gateway.domain.models import NumberKind
from gateway.domain.numbers import NumberPlan

PLAN = NumberPlan()


@given(
    subscriber=st.from_regex(r"\A[0-9]{8}\Z"),
    form=st.sampled_from(["010{}", "010-{a}-{b}", "+8210{}", "8210{}", "+82 10 {a} {b}", "9010{}", "9,010-{a}-{b}"]),
)
def test_mobile_fast_path_matches_phonenumbers(subscriber: str, form: str) -> None:
    raw = form.format(subscriber, a=subscriber[:4], b=subscriber[4:])
    got = NumberPlan().classify(raw)
    number = phonenumbers.parse("010" + subscriber, "KR")
    # The whole 010 range is mobile; phonenumbers' metadata marks some unallocated 010 blocks as
    # unknown (010-597x... in 9.0.43), which does not make a citizen's 010 number anything else.
    assert got.kind is NumberKind.MOBILE
    assert got.e164 == phonenumbers.format_number(number, PhoneNumberFormat.E164)


def test_other_numbers_still_go_through_phonenumbers() -> None:
    assert PLAN.classify("02-2133-1234").kind is NumberKind.LANDLINE
    assert PLAN.classify("011-234-5678").kind is NumberKind.MOBILE  # old 01X prefix: phonenumbers decides
    assert PLAN.classify("+1 650 253 0000").kind is NumberKind.INTERNATIONAL
    assert PLAN.classify("2001").kind is NumberKind.EXTENSION


@given(
    subscriber=st.from_regex(r"\A[0-9]{8}\Z"),
    form=st.sampled_from(["010{}", "+8210{}", "8210{}", "9010{}", "0010{}", "01{}", "10{}", " 010{} "]),
    prefixes=st.sampled_from([("9",), ("0",), ("8",), ("0", "9"), ()]),
    extension=st.sampled_from([r"^[0-9]{3,5}$", r"^[0-9]{11}$", r"^8[0-9]{10}$"]),
)
def test_the_uncached_mobile_path_answers_like_the_full_classification(
    subscriber: str, form: str, prefixes: tuple[str, ...], extension: str
) -> None:
    """Citizens' mobile numbers skip the cache (they are not kept in memory); whatever the
    PBX's outside-line prefixes and extension pattern, the answer is the same."""
    plan = NumberPlan(outside_line_prefixes=prefixes, extension_pattern=extension)
    raw = form.format(subscriber)
    assert plan.classify(raw) == plan._classify(raw)


def test_citizens_numbers_are_not_cached() -> None:
    plan = NumberPlan()
    plan.classify("01012345678")
    plan.classify("02-2133-1234")
    assert plan._cached.cache_info().currsize == 1  # the landline only
