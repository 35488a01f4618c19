"""Fuzzing the routing index: for random rule sets and messages, the indexed `route` picks the
rule a naive first-match scan picks, and explains every earlier rule (300 examples: the fuzz tier;
the unit tier keeps the fixed cases in tests/unit/test_routing.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.routing import InboundSms, RoutingRules, ThreadContext, route
from tests.unit.test_routing import _messages, _naive_route, _rule_sets

pytestmark = pytest.mark.fuzz


@given(_rule_sets(), st.lists(_messages(), min_size=1, max_size=10))
@settings(max_examples=300)
def test_indexed_routing_equals_a_naive_scan(
    rules: RoutingRules, messages: list[tuple[InboundSms, ThreadContext | None]]
) -> None:
    for msg, thread in messages:
        decision = route(msg, rules, thread)
        assert decision.rule == _naive_route(msg, rules, thread), (msg, thread)
        # The explanation (computed independently) agrees: every earlier rule has a reason.
        assert [name for name, _ in decision.explain] == [r.name for r in rules.rules[: len(decision.explain)]]
        assert all(not why.startswith("matches") for _, why in decision.explain)
