"""The extension directory (pure domain) and the generated city-hall directory."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import yaml

from gateway.domain.directory import (
    Department,
    Directory,
    DirectoryConflict,
    find_overlaps,
    parse_extension_range,
)
from gateway.rules.lettering import load_rules
from gateway.sim.directory_gen import CATALOGUE, cmd_generate_directory, generate_directory

RULES = Path(__file__).resolve().parents[2] / "rules"


def dept(dept_id: str) -> Department:
    return Department(dept_id, "한빛시청", dept_id, "안내", "", None)


PASSPORT, TAX, SHORT = dept("civil-passport"), dept("tax"), dept("short")


def test_lookup_finds_ranges_and_single_extensions() -> None:
    directory = Directory([("3000", "3199", TAX), ("2001", "2004", PASSPORT), ("2010", "2010", TAX)])
    assert directory.lookup("2001") is PASSPORT
    assert directory.lookup("2004") is PASSPORT
    assert directory.lookup("2010") is TAX
    assert directory.lookup("3000") is TAX
    assert directory.lookup("3199") is TAX
    for absent in ("2000", "2005", "2009", "2011", "2999", "3200", "9999", "1"):
        assert directory.lookup(absent) is None, absent


def test_leading_zeros_make_a_different_extension() -> None:
    directory = Directory([("123", "125", SHORT), ("0123", "0123", TAX)])
    assert directory.lookup("123") is SHORT
    assert directory.lookup("0123") is TAX
    assert directory.lookup("0124") is None
    assert directory.lookup("00123") is None


@pytest.mark.parametrize("text", ["", "20a0", "2001 ", "+2001", "2001-2002", "２００１", "-1"])
def test_lookup_of_non_digits_is_none(text: str) -> None:
    directory = Directory([("2001", "2010", PASSPORT)])
    assert directory.lookup(text) is None


def test_counts_and_departments_in_entry_order() -> None:
    directory = Directory([("3000", "3199", TAX), ("2001", "2004", PASSPORT), ("2010", "2010", TAX)])
    assert directory.extension_count() == 200 + 4 + 1
    assert directory.departments == (TAX, PASSPORT)
    assert len(directory) == 3


def test_overlap_raises_conflict_with_both_indices() -> None:
    with pytest.raises(DirectoryConflict) as info:
        Directory([("2001", "2004", PASSPORT), ("3000", "3099", TAX), ("2004", "2004", TAX)])
    assert (info.value.index, info.value.other_index) == (2, 0)
    assert "2004 (tax)" in str(info.value)
    assert "2001-2004 (civil-passport)" in str(info.value)


def test_ranges_of_different_width_do_not_overlap() -> None:
    directory = Directory([("200", "299", SHORT), ("2000", "2999", TAX)])
    assert directory.lookup("250") is SHORT
    assert directory.lookup("2500") is TAX


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [("2010", "2001", "greater"), ("999", "1000", "same number of digits"), ("20a0", "20a0", "digits")],
)
def test_invalid_entries_raise_value_error(first: str, last: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Directory([(first, last, TAX)])


def test_parse_extension_range() -> None:
    assert parse_extension_range("2010") == ("2010", "2010")
    assert parse_extension_range("2001-2099") == ("2001", "2099")
    for bad in ("20a0", "2001-", "-2001", "2001-2002-2003", " 2001", "2001–2002"):
        with pytest.raises(ValueError, match="is not an extension or range"):
            parse_extension_range(bad)


def test_find_overlaps_reports_every_overlapping_range() -> None:
    ranges = [("2001", "2100"), ("2050", "2050"), ("3000", "3010"), ("2090", "2200"), ("3010", "3020")]
    assert find_overlaps(ranges) == [(1, 0), (3, 0), (4, 2)]
    assert find_overlaps([("2001", "2002"), ("2003", "2004"), ("200", "300")]) == []


# ---------------------------------------------------------------------------------------------
# Generated directory
# ---------------------------------------------------------------------------------------------


def expand(text: str) -> list[tuple[str, str]]:
    """(extension, department id) for every extension of a generated directory, independently."""
    out = []
    for raw in yaml.safe_load(text)["departments"]:
        for item in raw["extensions"]:
            first, _, last = item.partition("-")
            last = last or first
            out += [(str(n), raw["id"]) for n in range(int(first), int(last) + 1)]
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    text = generate_directory(4000, seed=7)
    rules = tmp_path_factory.mktemp("generated")
    (rules / "directory.yaml").write_text(text, encoding="utf-8")
    shutil.copy(RULES / "lettering.yaml", rules / "lettering.yaml")
    return text, rules


def test_generated_directory_loads_and_maps_every_extension(generated: tuple[str, Path]) -> None:
    text, path = generated
    rules = load_rules(path)
    expected = expand(text)
    assert len(expected) == 4000
    assert len({ext for ext, _ in expected}) == 4000
    assert rules.directory.extension_count() == 4000
    for extension, dept_id in expected:
        found = rules.directory.lookup(extension)
        assert found is not None and found.id == dept_id, extension
    taken = {ext for ext, _ in expected}
    numbers = sorted(int(ext) for ext in taken)
    gaps = [str(n) for n in range(numbers[0], numbers[-1] + 1) if str(n) not in taken]
    assert gaps, "a realistic plan leaves free numbers between ranges"
    for absent in [*gaps, str(numbers[0] - 1), str(numbers[-1] + 1), "0" + str(numbers[0]), "999", "x"]:
        assert rules.directory.lookup(absent) is None, absent


def test_generated_directory_is_realistic(generated: tuple[str, Path]) -> None:
    text, path = generated
    rules = load_rules(path)
    departments = rules.directory.departments
    assert len(departments) == len(CATALOGUE) >= 40
    assert all(0 < len(d.guide) <= 40 for d in departments)
    names = {d.name for d in departments}
    assert {"민원여권과", "세무과", "복지정책과", "교통행정과", "건축과", "환경정책과"} <= names
    assert {d.organisation for d in departments} >= {"한빛시청", "한빛시 보건소"}
    numbered = [d for d in departments if d.caller_number]
    assert all(d.caller_number.startswith("+8231900") for d in numbered)
    assert len(numbered) == len(departments) - 1  # the duty office has no public number
    # The recorded PBX's phones start the plan.
    passport = rules.directory.lookup("2001")
    assert passport is not None and passport.name == "민원여권과"
    assert passport.caller_number == "+82319002001"
    # Several ranges and single extensions per department, not one block each.
    items = [item for raw in yaml.safe_load(text)["departments"] for item in raw["extensions"]]
    assert len(items) > 2 * len(departments)
    assert any("-" not in item for item in items)


def test_generated_directory_is_deterministic_per_seed() -> None:
    assert generate_directory(4000, seed=7) == generate_directory(4000, seed=7)
    assert generate_directory(4000, seed=7) != generate_directory(4000, seed=8)


@pytest.mark.parametrize("phones", [1, 3, 45, 46, 999, 12000])
def test_generated_directory_has_exactly_the_requested_phones(phones: int, tmp_path: Path) -> None:
    text = generate_directory(phones, seed=3)
    assert len(expand(text)) == phones
    (tmp_path / "directory.yaml").write_text(text, encoding="utf-8")
    shutil.copy(RULES / "lettering.yaml", tmp_path / "lettering.yaml")
    assert load_rules(tmp_path).directory.extension_count() == phones


def test_large_plans_switch_to_five_digit_extensions() -> None:
    extensions = [ext for ext, _ in expand(generate_directory(12000))]
    assert all(len(ext) == 5 for ext in extensions)


def test_cmd_generate_directory() -> None:
    out = io.StringIO()
    assert cmd_generate_directory(50, out) == 0
    assert out.getvalue() == generate_directory(50)
    bad = io.StringIO()
    assert cmd_generate_directory(0, bad) == 2
    assert "at least 1" in bad.getvalue()
