"""Loading rules/*.yaml: line-numbered YAML, schema messages, semantic checks, `rules check`."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.models import Direction, NumberKind
from gateway.domain.rules import LetteringRules, ProviderRoute, template_problems
from gateway.errors import RulesError
from gateway.infra.yamldoc import file_label, format_path, load_yaml, parse_yaml, validate
from gateway.rules.directory import DIRECTORY_SCHEMA
from gateway.rules.lettering import LETTERING_SCHEMA, load_rules
from gateway.rules.messaging import load_messaging
from gateway.rules.ruleset import check, cmd_rules_check, load_all

RULES = Path(__file__).resolve().parents[2] / "rules"

# Line numbers in the comments are what the assertions below rely on.
DIRECTORY = textwrap.dedent(
    """\
    organisation: 한빛시청
    departments:
      - id: civil-passport
        name: 민원여권과
        guide: 여권 발급 관련 안내 전화입니다
        caller_number: 031-900-2000
        extensions: ["2001-2004"]
      - id: tax
        name: 세무과
        organisation: 한빛시 세무서
        guide: 지방세 납부 관련 안내 전화입니다
        postcall: tax-guide
        extensions:
          - "2008"
          - "3000-3199"
    """
)

LETTERING = textwrap.dedent(
    """\
    directions: [outbound]
    number_kinds: [mobile]
    providers:
      - provider: skt
        pbx: cityhall
        trunk: carrier
      - provider: sandbox
    template: "{organisation} {department}: {guide}"
    max_text_chars: 20
    """
)


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``rules/`` under a temporary working directory, so labels read ``rules/...``."""
    monkeypatch.chdir(tmp_path)
    path = Path("rules")
    path.mkdir()
    return path


def write(rules_dir: Path, directory: str = DIRECTORY, lettering: str = LETTERING) -> Path:
    (rules_dir / "directory.yaml").write_text(directory, encoding="utf-8")
    (rules_dir / "lettering.yaml").write_text(lettering, encoding="utf-8")
    return rules_dir


def problems_of(rules_dir: Path) -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(rules_dir)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# Good rules
# ---------------------------------------------------------------------------------------------


def test_sample_rules_load_and_map_the_recorded_pbx_phones() -> None:
    rules = load_rules(RULES)
    directory = rules.directory
    owners = {ext: directory.lookup(ext) for ext in [*(str(n) for n in range(2001, 2011)), "2100"]}
    assert all(owners.values()), [ext for ext, dept in owners.items() if dept is None]
    ids = {ext: dept.id for ext, dept in owners.items() if dept is not None}
    assert ids["2001"] == ids["2002"] == ids["2003"] == ids["2004"] == "civil-passport"
    assert ids["2005"] == ids["2006"] == ids["2007"] == ids["2100"] == "civil-callcenter"
    callcenter = directory.lookup("2100")
    assert callcenter is not None and callcenter.caller_number == "+82319002100"  # the queue's DID
    health = directory.lookup("4000")
    assert health is not None and health.organisation == "한빛시 보건소"
    assert directory.lookup("3500") is not None and directory.lookup("5000") is None
    assert len(rules.version) == 12 and int(rules.version, 16) >= 0

    lettering = rules.lettering
    assert lettering.directions == {Direction.OUTBOUND}
    assert lettering.number_kinds == {NumberKind.MOBILE}
    assert lettering.outside_line_prefixes == ("9",)
    assert lettering.provider_for("cityhall", "carrier") == "sandbox"
    passport = directory.lookup("2001")
    assert passport is not None
    text = lettering.render(
        {"organisation": passport.organisation, "department": passport.name, "guide": passport.guide}
    )
    assert text == "[한빛시청] 민원여권과 여권 발급 관련 안내 전화입니다"
    assert len(text) <= lettering.max_text_chars


def test_cmd_rules_check_on_the_sample_rules() -> None:
    # The command `gateway rules check` runs: every rules file, the post-call contents counted too.
    out = io.StringIO()
    assert cmd_rules_check(RULES, out) == 0
    rules = load_rules(RULES)
    count = rules.directory.extension_count()
    contents = len(load_messaging(RULES, rules.directory).contents)
    assert out.getvalue() == (
        f"rules OK: version {rules.version}, {len(rules.directory.departments)} departments, "
        f"{count} extensions, {contents} post-call contents\n"
    )


def test_fixture_rules_become_domain_values(rules_dir: Path) -> None:
    rules = load_rules(write(rules_dir))
    assert rules.source == "rules"
    passport, tax = rules.directory.departments
    assert passport.caller_number == "+82319002000"
    assert passport.organisation == "한빛시청" and passport.postcall is None
    assert tax.organisation == "한빛시 세무서" and tax.caller_number == "" and tax.postcall == "tax-guide"
    assert rules.directory.lookup("2008") is tax
    assert rules.directory.extension_count() == 4 + 1 + 200
    assert rules.lettering.providers == (
        ProviderRoute("skt", "cityhall", "carrier"),
        ProviderRoute("sandbox"),
    )
    assert rules.lettering.provider_for("cityhall", "carrier") == "skt"
    assert rules.lettering.provider_for("cityhall", "other") == "sandbox"
    assert rules.lettering.provider_for("annex", "carrier") == "sandbox"
    # Cut to 20 characters on a character boundary, nothing appended.
    text = rules.lettering.render(
        {"organisation": "한빛시청", "department": "민원여권과", "guide": "여권 발급 관련 안내 전화입니다"}
    )
    assert text == "한빛시청 민원여권과: 여권 발급 관련"
    assert len(text) <= 20


def test_lettering_keys_are_optional_and_default(rules_dir: Path) -> None:
    rules = load_rules(write(rules_dir, lettering="enabled: true\n"))
    assert rules.lettering == LetteringRules()


def test_version_follows_file_bytes(rules_dir: Path) -> None:
    first = load_rules(write(rules_dir)).version
    assert load_rules(rules_dir).version == first
    write(rules_dir, lettering=LETTERING + "# a comment changes the version too\n")
    assert load_rules(rules_dir).version != first


def test_cmd_rules_check_ok_summary(rules_dir: Path) -> None:
    out = io.StringIO()
    assert cmd_rules_check(write(rules_dir), out) == 0
    assert out.getvalue().startswith("rules OK: version ")
    assert out.getvalue().endswith(", 2 departments, 205 extensions, 0 post-call contents\n")


def test_load_all_and_check_cover_every_rules_file(rules_dir: Path) -> None:
    ruleset = load_all(RULES)
    assert ruleset.rules.version == load_rules(RULES).version
    assert ruleset.routing is not None and ruleset.notify.queues and ruleset.messaging.contents
    assert check(RULES) == []
    # Broken in two files: check reports both, load_all (start-up, reload) stops at the first.
    write(rules_dir, lettering=LETTERING.replace("template:", "templte:"))
    (rules_dir / "notify.yaml").write_text('sender: "abc"\n', encoding="utf-8")
    assert check(rules_dir) == [
        "rules/lettering.yaml:8: unknown key 'templte' (did you mean 'template'?)",
        "rules/notify.yaml:1: sender: 'abc' is not a phone number",
    ]
    with pytest.raises(RulesError) as info:
        load_all(rules_dir)
    assert info.value.problems == check(rules_dir)[:1]


# ---------------------------------------------------------------------------------------------
# Domain values
# ---------------------------------------------------------------------------------------------


def test_render_fills_missing_variables_with_nothing_and_collapses_spaces() -> None:
    rules = LetteringRules(template="{organisation}  {caller_number} {guide}", max_text_chars=40)
    assert rules.render({"organisation": "한빛시청", "guide": "안내\n전화"}) == "한빛시청 안내 전화"


def test_provider_for_raises_when_no_route_matches() -> None:
    rules = LetteringRules(providers=(ProviderRoute("skt", pbx="cityhall"),))
    assert rules.provider_for("cityhall", "x") == "skt"
    with pytest.raises(LookupError):
        rules.provider_for("annex", "x")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{guide}", []),
        ("[{organisation}] {department} {extension} {caller_number} {department_id} {{x}}", []),
        ("{guid}", ["unknown template variable {guid}"]),
        ("{}", ["positional field {} is not allowed"]),
        ("{0}", ["positional field {0} is not allowed"]),
        ("{guide.__class__}", ["only plain variables are allowed"]),
        ("{guide[0]}", ["only plain variables are allowed"]),
        ("{guide", ["bad template syntax"]),
        ("guide}", ["bad template syntax"]),
        ("{guide:d}", ["bad template format"]),
        ("{a} {b}", ["{a}", "{b}"]),
    ],
)
def test_template_problems(template: str, expected: list[str]) -> None:
    found = template_problems(template)
    assert len(found) == len(expected), found
    for problem, fragment in zip(found, expected, strict=True):
        assert fragment in problem


# ---------------------------------------------------------------------------------------------
# Generic YAML loader and validator
# ---------------------------------------------------------------------------------------------


def test_load_yaml_maps_every_key_and_item_to_its_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb:\n  - x\n  - c: 2\n    d: [3, 4]\n\ne:\n  f: g\n", encoding="utf-8")
    data, lines = load_yaml(path)
    assert data == {"a": 1, "b": ["x", {"c": 2, "d": [3, 4]}], "e": {"f": "g"}}
    assert lines[()] == 1
    assert lines[("a",)] == 1
    assert lines[("b",)] == 2
    assert lines[("b", 0)] == 3
    assert lines[("b", 1)] == 4
    assert lines[("b", 1, "c")] == 4
    assert lines[("b", 1, "d")] == 5
    assert lines[("b", 1, "d", 1)] == 5
    assert lines[("e",)] == 7
    assert lines[("e", "f")] == 8


def test_load_yaml_reports_every_duplicate_key_at_its_second_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_yaml(path, "x.yaml")
    assert info.value.problems == [
        "x.yaml:4: b.c: duplicate key 'c' (first on line 3)",
        "x.yaml:5: a: duplicate key 'a' (first on line 1)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb:\n  - x\n  c: 2\n", "x.yaml:4: YAML syntax error: expected <block end>"),
        ("a: 1\nb: [1, 2\nc: 3\n", "x.yaml:3: YAML syntax error: expected ',' or ']'"),
        ("a: 1\n\tb: 2\n", "x.yaml:2: YAML syntax error: found character '\\t'"),
        ("a: 1\nb: *nope\n", "x.yaml:2: YAML syntax error: found undefined alias 'nope'"),
    ],
)
def test_yaml_syntax_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_yaml(text, "x.yaml")
    [problem] = info.value.problems
    assert problem.startswith(expected), problem


def test_non_utf8_names_the_line() -> None:
    with pytest.raises(RulesError) as info:
        parse_yaml("a: 1\nb: 한빛\n".encode("cp949"), "x.yaml")
    assert info.value.problems == ["x.yaml:2: not UTF-8 text (byte 8)"]


def test_load_yaml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as info:
        load_yaml(tmp_path / "nope.yaml", "rules/nope.yaml")
    assert info.value.problems == ["rules/nope.yaml: file not found"]


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["queue"],
    "properties": {
        "queue": {"enum": ["duty", "complaint"], "x-message": "{value!r} is not a queue"},
        "hours": {"type": "array", "items": {"type": "integer", "maximum": 23}},
        "when": {
            "type": "object",
            "properties": {"start": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"}},
        },
    },
}


def test_validate_is_generic_and_reports_every_problem() -> None:
    text = "queu: duty\nhours: [1, 30,\n  x]\nwhen:\n  start: 9h\n"
    data, lines = parse_yaml(text, "rules/routing.yaml")
    assert validate(data, SCHEMA, lines, "rules/routing.yaml") == [
        "rules/routing.yaml:1: unknown key 'queu' (did you mean 'queue'?)",
        "rules/routing.yaml:1: missing required key 'queue'",
        "rules/routing.yaml:2: hours[1]: 30 is too large (maximum 23)",
        "rules/routing.yaml:3: hours[2]: expected a whole number, got 'x'",
        "rules/routing.yaml:5: when.start: '9h' does not match ^[0-9]{2}:[0-9]{2}$",
    ]
    data, lines = parse_yaml("queue: night\n", "r.yaml")
    assert validate(data, SCHEMA, lines, "r.yaml") == ["r.yaml:1: queue: 'night' is not a queue"]
    assert validate(None, SCHEMA, {}, "r.yaml") == ["r.yaml:1: expected a mapping of keys, got nothing"]


def test_format_path_and_file_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert format_path(("departments", 3, "extensions", 0)) == "departments[3].extensions[0]"
    assert format_path([]) == ""
    monkeypatch.chdir(tmp_path)
    assert file_label(tmp_path / "rules" / "directory.yaml") == "rules/directory.yaml"
    assert file_label(Path("rules/directory.yaml")) == "rules/directory.yaml"
    assert file_label(Path("/elsewhere/x.yaml")) == "/elsewhere/x.yaml"


def test_the_rule_schemas_accept_the_sample_files() -> None:
    for name, schema in (("directory.yaml", DIRECTORY_SCHEMA), ("lettering.yaml", LETTERING_SCHEMA)):
        data, lines = load_yaml(RULES / name)
        assert validate(data, schema, lines, name) == []


# ---------------------------------------------------------------------------------------------
# Broken rules: every problem names file:line and key
# ---------------------------------------------------------------------------------------------


def test_typo_in_a_key(rules_dir: Path) -> None:
    write(rules_dir, directory=DIRECTORY.replace("    guide: 지방세", "    guid: 지방세"))
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:8: departments[1]: missing required key 'guide'",
        "rules/directory.yaml:11: departments[1]: unknown key 'guid' (did you mean 'guide'?)",
    ]


def test_typo_in_a_lettering_key(rules_dir: Path) -> None:
    write(rules_dir, lettering=LETTERING.replace("template:", "templte:"))
    assert problems_of(rules_dir) == ["rules/lettering.yaml:8: unknown key 'templte' (did you mean 'template'?)"]


def test_bad_range(rules_dir: Path) -> None:
    write(rules_dir, directory=DIRECTORY.replace('"2008"', '"20a0"'))
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:14: departments[1].extensions[0]: '20a0' is not an extension or range"
    ]


def test_reversed_range_and_mixed_widths(rules_dir: Path) -> None:
    directory = DIRECTORY.replace('"2008"', '"2010-2008"').replace('"3000-3199"', '"999-1000"')
    write(rules_dir, directory=directory)
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:14: departments[1].extensions[0]: '2010-2008': first extension is greater than the last",
        "rules/directory.yaml:15: departments[1].extensions[1]: "
        "'999-1000': both ends must have the same number of digits",
    ]


def test_unquoted_extension(rules_dir: Path) -> None:
    write(rules_dir, directory=DIRECTORY.replace('"2008"', "2008"))
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:14: departments[1].extensions[0]: "
        'extensions are quoted text, like "2010" or "2001-2099" (got 2008)'
    ]


def test_overlapping_ranges_name_both_departments_and_lines(rules_dir: Path) -> None:
    write(rules_dir, directory=DIRECTORY.replace('"2008"', '"2004"'))
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:14: departments[1].extensions[0]: extensions 2004 of 'tax' overlap "
        "2001-2004 of 'civil-passport' (departments[0].extensions[0], line 7)"
    ]


def test_bad_template_variable(rules_dir: Path) -> None:
    write(rules_dir, lettering=LETTERING.replace("{department}", "{dept}"))
    [problem] = problems_of(rules_dir)
    assert problem.startswith("rules/lettering.yaml:8: template: unknown template variable {dept} (known: ")


def test_duplicate_keys_in_rules(rules_dir: Path) -> None:
    write(rules_dir, directory=DIRECTORY.replace("    postcall: tax-guide\n", "    name: 세무1과\n"))
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:12: departments[1].name: duplicate key 'name' (first on line 9)"
    ]


def test_yaml_syntax_error_in_rules(rules_dir: Path) -> None:
    write(rules_dir, lettering=LETTERING.replace("number_kinds: [mobile]", "number_kinds: [mobile"))
    [problem] = problems_of(rules_dir)
    assert problem.startswith("rules/lettering.yaml:3: YAML syntax error: ")


def test_semantic_problems(rules_dir: Path) -> None:
    directory = DIRECTORY.replace("031-900-2000", "031-900").replace("id: tax", "id: civil-passport")
    lettering = (
        LETTERING.replace("  - provider: sandbox\n", "")
        .replace("max_text_chars: 20", "max_text_chars: 0")
        .replace("directions: [outbound]", "directions: [outbond]")
        + "extension_pattern: '^[0-9'\n"
    )
    write(rules_dir, directory, lettering)
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:6: departments[0].caller_number: '031-900' is not a valid Korean phone number",
        "rules/directory.yaml:8: departments[1].id: duplicate department id 'civil-passport' "
        "(first at departments[0], line 3)",
        "rules/lettering.yaml:1: directions[0]: "
        "'outbond' is not a call direction: use one of outbound, inbound, internal",
        "rules/lettering.yaml:4: providers[0]: the last route must be a catch-all (no pbx, no trunk) "
        "so that every call has a provider",
        "rules/lettering.yaml:8: max_text_chars: 0 is too small (minimum 1)",
        "rules/lettering.yaml:9: extension_pattern: not a valid regular expression: "
        "unterminated character set at position 1",
    ]


def test_routes_after_a_catch_all_are_never_used(rules_dir: Path) -> None:
    write(rules_dir, lettering="providers:\n  - provider: sandbox\n  - provider: skt\n")
    assert problems_of(rules_dir) == [
        "rules/lettering.yaml:3: providers[1]: never used: providers[0] already matches every call"
    ]


def test_extensions_must_look_like_extensions(rules_dir: Path) -> None:
    write(rules_dir, lettering=LETTERING + "extension_pattern: '^[0-9]{4}$'\n")
    (rules_dir / "directory.yaml").write_text(DIRECTORY.replace('"2008"', '"208"'), encoding="utf-8")
    [problem] = problems_of(rules_dir)
    assert problem.startswith(
        "rules/directory.yaml:14: departments[1].extensions[0]: '208' does not look like a desk extension"
    )


def test_all_problems_of_both_files_at_once(rules_dir: Path) -> None:
    directory = (
        DIRECTORY.replace("  - id: tax", "  - id: tax\n    departmnt: 세무")  # lines below shift by one
        .replace('"2008"', '"20a0"')
        .replace('"3000-3199"', '"2003"')
    )
    lettering = LETTERING.replace("{guide}", "{guide} {office}").replace("number_kinds:", "number_kind:")
    write(rules_dir, directory, lettering)
    problems = problems_of(rules_dir)
    assert problems == [
        "rules/directory.yaml:9: departments[1]: unknown key 'departmnt' "
        "(known keys: id, name, organisation, guide, caller_number, postcall, extensions)",
        "rules/directory.yaml:15: departments[1].extensions[0]: '20a0' is not an extension or range",
        "rules/directory.yaml:16: departments[1].extensions[1]: extensions 2003 of 'tax' overlap "
        "2001-2004 of 'civil-passport' (departments[0].extensions[0], line 7)",
        "rules/lettering.yaml:2: unknown key 'number_kind' (did you mean 'number_kinds'?)",
        problems[4],
    ]
    assert problems[4].startswith("rules/lettering.yaml:8: template: unknown template variable {office}")


def test_missing_file_is_reported_with_the_other_files_problems(rules_dir: Path) -> None:
    (rules_dir / "directory.yaml").write_text(DIRECTORY.replace('"2008"', '"20a0"'), encoding="utf-8")
    assert problems_of(rules_dir) == [
        "rules/directory.yaml:14: departments[1].extensions[0]: '20a0' is not an extension or range",
        "rules/lettering.yaml: file not found",
    ]


def test_empty_directory_file(rules_dir: Path) -> None:
    write(rules_dir, directory="# nothing yet\n")
    assert problems_of(rules_dir) == ["rules/directory.yaml:1: expected a mapping of keys, got nothing"]


def test_cmd_rules_check_prints_every_problem_and_fails(rules_dir: Path) -> None:
    write(rules_dir, DIRECTORY.replace('"2008"', '"20a0"'), LETTERING.replace("template:", "templte:"))
    out = io.StringIO()
    assert cmd_rules_check(rules_dir, out) == 1
    assert out.getvalue().splitlines() == [
        "rules/directory.yaml:14: departments[1].extensions[0]: '20a0' is not an extension or range",
        "rules/lettering.yaml:8: unknown key 'templte' (did you mean 'template'?)",
        "rules NOT OK: 2 problems in rules",
    ]
