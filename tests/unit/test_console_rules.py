"""rules/console.yaml (canned answers, duty manual): loading, every kind of mistake reported with
file:line and key path, `rules check` and `load_all` covering it; and the recent-decisions buffer."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from gateway.domain.guidance import ConsoleRules
from gateway.domain.routing import RoutingRules
from gateway.domain.smstext import encoded_length
from gateway.errors import RulesError
from gateway.infra.recent import RecentDecisions, Tee
from gateway.rules.console import load_console, parse_console
from gateway.rules.routing import load_routing_rules
from gateway.rules.ruleset import check, load_all

RULES = Path(__file__).resolve().parents[2] / "rules"
LABEL = "rules/console.yaml"


@pytest.fixture(scope="module")
def routing() -> RoutingRules:
    loaded = load_routing_rules(RULES)
    assert loaded is not None
    return loaded


def problems(text: str, routing: RoutingRules | None) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_console(textwrap.dedent(text), LABEL, routing)
    return info.value.problems


def test_the_sample_file_loads_and_fits_the_routing_rules(routing: RoutingRules) -> None:
    console = load_console(RULES, routing)
    assert len(console.canned) >= 8 and len(console.manual) >= 4
    assert len(console.version) == 12
    # Every canned answer fits one LMS; every rule and tag it names exists in routing.yaml.
    names = {r.name for r in routing.rules}
    tags = {t for r in routing.rules for t in r.then.tags}
    for canned in console.canned:
        assert canned.rules <= names and canned.tags <= tags
    for manual in console.manual:
        assert manual.rules <= names and manual.tags <= tags
    assert all(encoded_length(c.text) <= 2000 for c in console.canned)
    # An emergency thread gets the emergency entries first, then the general ones.
    guidance = console.for_thread("emergency", ["emergency"])
    assert guidance.canned[0].title == "긴급 신고 안내"
    assert guidance.manual[0].title == "긴급 상황 처리"
    assert guidance.manual[-1].title == "공통 처리 원칙"
    # A parking thread does not see the emergency answers.
    assert "긴급 신고 안내" not in [c.title for c in console.for_thread("illegal-parking", ["parking"]).canned]


def test_a_good_small_file(routing: RoutingRules) -> None:
    console = parse_console(
        """\
canned:
  - title: 접수
    text: 접수되었습니다.
  - title: 주차
    rules: [illegal-parking]
    tags: [parking]
    text: 단속반이 확인합니다.
manual:
  - title: 야간
    tags: [after-hours]
    steps: [확인한다, 넘긴다]
""",
        LABEL,
        routing,
    )
    assert [c.title for c in console.canned] == ["접수", "주차"]
    assert console.canned[1].rules == frozenset({"illegal-parking"}) and console.canned[1].tags == frozenset(
        {"parking"}
    )
    assert console.manual[0].steps == ("확인한다", "넘긴다")


def test_missing_and_empty_files_are_empty_rules(tmp_path: Path, routing: RoutingRules) -> None:
    assert load_console(tmp_path, routing) == ConsoleRules()
    (tmp_path / "console.yaml").write_text("# nothing yet\n", encoding="utf-8")
    loaded = load_console(tmp_path, routing)
    assert loaded.canned == () and loaded.manual == () and loaded.version


def test_unknown_keys_are_reported_at_their_line(routing: RoutingRules) -> None:
    found = problems(
        """\
canned:
  - title: 접수
    txet: 접수되었습니다.
manul: []
""",
        routing,
    )
    assert found == [
        "rules/console.yaml:2: canned[0]: missing required key 'text'",
        "rules/console.yaml:3: canned[0]: unknown key 'txet' (did you mean 'text'?)",
        "rules/console.yaml:4: unknown key 'manul' (did you mean 'manual'?)",
    ]


def test_unknown_rule_names_and_tags(routing: RoutingRules) -> None:
    found = problems(
        """\
canned:
  - title: 주차
    rules: [ilegal-parking]
    text: 확인합니다.
manual:
  - title: 야간
    tags: [afterhours, nosuchtag]
    steps: [확인한다]
""",
        routing,
    )
    assert found == [
        "rules/console.yaml:3: canned[0].rules[0]: unknown rule 'ilegal-parking': not a rule name of "
        "routing.yaml (did you mean 'illegal-parking'?)",
        "rules/console.yaml:7: manual[0].tags[0]: unknown tag 'afterhours': not a tag any routing.yaml rule "
        "gives (did you mean 'after-hours'?)",
        "rules/console.yaml:7: manual[0].tags[1]: unknown tag 'nosuchtag': not a tag any routing.yaml rule "
        "gives (known: after-hours, emergency, environment, parking, reply, road, transport)",
    ]


def test_rules_and_tags_without_a_routing_file() -> None:
    found = problems("canned:\n  - title: a\n    text: b\n    tags: [road]\n", None)
    assert found == ["rules/console.yaml:4: canned[0].tags[0]: tag 'road': there is no routing.yaml to take it from"]
    # Entries for every thread are fine without routing.yaml.
    assert len(parse_console("canned:\n  - title: a\n    text: b\n", LABEL, None).canned) == 1


def test_an_answer_longer_than_one_lms_and_characters_sms_cannot_carry(routing: RoutingRules) -> None:
    long_text = "가" * 1001  # 2,002 bytes in EUC-KR
    found = problems(
        f'canned:\n  - title: 긴 답\n    text: "{long_text}"\n  - title: 웃음\n    text: "감사합니다 😀"\n', routing
    )
    assert found == [
        "rules/console.yaml:3: canned[0].text: is 2002 bytes in EUC-KR: an answer is at most 2000 bytes "
        "(one LMS); shorten it",
        "rules/console.yaml:5: canned[1].text: has characters a text message cannot carry: '😀' -> ''",
    ]
    # 1,000 Hangul syllables are exactly one LMS.
    assert parse_console(f'canned:\n  - title: 딱 맞음\n    text: "{"가" * 1000}"\n', LABEL, routing).canned


def test_duplicate_titles_and_empty_steps(routing: RoutingRules) -> None:
    found = problems(
        """\
canned:
  - title: 접수
    text: 하나
  - title: 접수
    text: 둘
manual:
  - title: 야간
    steps: []
""",
        routing,
    )
    assert found == [
        "rules/console.yaml:8: manual[0].steps: needs at least 1 item",
    ]
    found = problems("canned:\n  - title: 접수\n    text: 하나\n  - title: 접수\n    text: 둘\n", routing)
    assert found == ["rules/console.yaml:4: canned[1].title: duplicate title '접수' (first at canned[0], line 2)"]


def test_syntax_errors_and_wrong_types(routing: RoutingRules) -> None:
    assert problems("canned: [\n", routing)[0].startswith("rules/console.yaml:2: YAML syntax error")
    assert problems("canned:\n  - title: a\n    text: b\n    rules: road\n", routing) == [
        "rules/console.yaml:4: canned[0].rules: expected a list, got 'road'"
    ]


@pytest.fixture
def rules_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    monkeypatch.chdir(tmp_path)
    return target


def test_rules_check_and_load_all_cover_console_yaml(rules_copy: Path) -> None:
    assert check(rules_copy) == []
    assert load_all(rules_copy).console.canned
    path = rules_copy / "console.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("rules: [emergency]", "rules: [emergancy]"), "utf-8")
    found = check(rules_copy)
    assert len(found) == 2 and all(p.startswith("rules/console.yaml:") for p in found)
    assert "unknown rule 'emergancy'" in found[0] and "did you mean 'emergency'?" in found[0]
    with pytest.raises(RulesError):
        load_all(rules_copy)  # start-up and the hot reload refuse it like any rules file
    # Without console.yaml (an older deployment) everything loads, with empty console rules.
    path.unlink()
    assert check(rules_copy) == [] and load_all(rules_copy).console == ConsoleRules()


def test_a_broken_routing_file_is_reported_once(rules_copy: Path) -> None:
    routing = rules_copy / "routing.yaml"
    routing.write_text(routing.read_text(encoding="utf-8").replace("queue: duty\n", "queue: dutty\n", 1), "utf-8")
    found = check(rules_copy)
    # console.yaml is not checked against a routing file that did not load: no spurious problems.
    assert found and all(p.startswith("rules/routing.yaml:") for p in found)


# --------------------------------------------------------------------------- recent decisions


def test_recent_decisions_keep_the_last_n_masked() -> None:
    clock = iter(range(1000, 2000))
    recent = RecentDecisions(size=3, clock=lambda: float(next(clock)))
    recent.decision({"event": "call", "pbx": "cityhall", "party": "+821012345678"})  # not kept by default
    for i in range(4):
        recent.decision(
            {"event": "lettering", "pbx": "cityhall", "call": f"c{i}", "to": "+821012345678", "result": "delivered"}
        )
    recent.decision({"event": "skipped", "pbx": "cityhall", "call": "c9", "to": "+821099998888", "reason": "landline"})
    last = recent.last()
    assert len(recent) == 3 and recent.seen == 5
    assert [d.get("call") for d in last] == ["c9", "c3", "c2"]  # newest first
    assert last[1].get("to") == "010-****-5678" and last[0].get("to") == "010-****-8888"
    assert all("12345678" not in repr(d) and "99998888" not in repr(d) for d in last)
    assert [d.event for d in recent.last(kinds=frozenset({"skipped"}))] == ["skipped"]
    assert recent.last(1)[0].at > recent.last(2)[1].at


def test_recent_decisions_drop_unknown_fields_and_cut_long_texts() -> None:
    recent = RecentDecisions(size=5)
    recent.decision({"event": "sent", "detail": "x" * 500, "body": "시민의 문자 내용", "to": "+82311234567"})
    (d,) = recent.last()
    assert "body" not in d.fields and len(d.get("detail")) == 120 and d.get("to").endswith("4567")
    assert "1234567" not in d.get("to")
    with pytest.raises(ValueError):
        RecentDecisions(size=0)


def test_tee_reaches_every_sink_even_after_one_fails() -> None:
    class Broken:
        def decision(self, record: object) -> None:
            raise RuntimeError("broken sink")

    first, last = RecentDecisions(size=2), RecentDecisions(size=2)
    tee = Tee(first, Broken(), last)
    with pytest.raises(RuntimeError):
        tee.decision({"event": "inbound", "queue": "duty", "status": "accepted"})
    assert len(first) == 1 and len(last) == 1


def test_the_rules_holder_reloads_console_yaml_with_the_other_files(rules_copy: Path) -> None:
    from gateway.app.gateway import RulesHolder

    holder = RulesHolder(rules_copy)
    before = holder.get_console()
    assert before.canned and holder.status()["console_version"] == before.version
    path = rules_copy / "console.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "  - title: 새 매뉴얼\n    steps: [확인한다]\n", encoding="utf-8")
    assert holder.reload() is True
    assert holder.get_console().manual[-1].title == "새 매뉴얼" and holder.get_console().version != before.version
    # A broken console.yaml keeps the last good rules, and says why.
    path.write_text(text.replace("tags: [road]", "tags: [raod]"), encoding="utf-8")
    assert holder.reload() is False
    assert holder.get_console().manual[-1].title == "새 매뉴얼"
    assert "unknown tag 'raod'" in holder.status()["last_error"]
