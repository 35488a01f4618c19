"""The Redis key table (`gateway.infra.rediskeys`) against its helpers, the code and the Lua files.

Key names are a storage format: a running gateway's Redis must stay readable by the next
release. The patterns in `KEY_FAMILIES` are literal strings, so a helper that drifts from its
row, or a key spelled outside the module, fails here."""

from __future__ import annotations

import inspect
import re
import tomllib
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import pytest
from dramatiq.common import dq_name, xq_name

from gateway.infra import rediskeys
from gateway.infra.rediskeys import KEY_FAMILIES, KeyFamily

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
PLACEHOLDER = re.compile(r"<([a-z_]+)>")


def _built(family: KeyFamily) -> str:
    """The family's key built from its own placeholders: equal to the pattern when they agree."""
    if isinstance(family.build, str):
        return family.build
    names = PLACEHOLDER.findall(family.pattern)
    parameters = list(inspect.signature(family.build).parameters)
    assert parameters == names, f"{family.pattern}: the helper takes {parameters}"
    return family.build(*(f"<{n}>" for n in names))


@pytest.mark.parametrize("family", KEY_FAMILIES, ids=lambda f: f.pattern)
def test_each_helper_builds_its_pattern(family: KeyFamily) -> None:
    assert _built(family) == family.pattern


@pytest.mark.parametrize("family", KEY_FAMILIES, ids=lambda f: f.pattern)
def test_each_family_says_what_it_holds_and_how_long(family: KeyFamily) -> None:
    assert family.holds in {"plain", "hash", "sealed"}
    assert family.type in {"string", "hash", "stream", "list", "zset", "set"}
    assert family.owner and family.what and family.ttl
    if family.ttl.startswith("none"):
        assert family.ttl.startswith("none: ") and len(family.ttl) > len("none: "), "say why there is no TTL"


def test_every_helper_is_in_the_table_once() -> None:
    helpers = {
        name
        for name, value in vars(rediskeys).items()
        if inspect.isfunction(value) and value.__module__ == rediskeys.__name__ and name.endswith("_key")
    }
    listed = [f.build.__name__ for f in KEY_FAMILIES if not isinstance(f.build, str)]
    assert sorted(listed) == sorted(helpers)
    assert len({f.pattern for f in KEY_FAMILIES}) == len(KEY_FAMILIES)


def test_names_stay_as_they_were() -> None:
    """A few keys spelled out in full, as the Redis of a running gateway holds them."""
    assert rediskeys.optout_key("ab12") == "gw:optout:ab12"
    assert rediskeys.dedupe_key("pbx1:c1:lettering:ab12") == "gw:dedupe:pbx1:c1:lettering:ab12"
    assert rediskeys.rate_key("ab12", 29_000_000) == "gw:rate:ab12:29000000"
    assert rediskeys.inbound_key("nhn", "m1") == "gw:in:nhn:m1"
    assert rediskeys.thread_messages_key("t1") == "gw:thread:t1:msgs"
    assert rediskeys.reply_once_key("t1", "d" * 24) == "gw:reply-once:t1:" + "d" * 24
    assert rediskeys.queue_messages_key("gw", dq_name("sms")) == "gw:sms.DQ.msgs"
    assert rediskeys.dead_letters_key("gw", "sms") == "gw:" + xq_name("sms")
    assert rediskeys.dead_letters_messages_key("gw", "sms") == "gw:sms.XQ.msgs"
    assert rediskeys.acks_key("gw", "w1", "sms.DQ") == "gw:__acks__.w1.sms.DQ"
    assert rediskeys.acks_pattern("gw") == "gw:__acks__.*"


# Spellings of a key outside rediskeys: a quoted "gw:", the prefix or a namespace joined by hand,
# dramatiq's suffixes and internal names.
_INLINE = re.compile(
    r"""["']gw:|\{PREFIX\}|\bPREFIX \+|namespace\}:|\{ns\}:|(\}|\+ ["'])\.(XQ|DQ|msgs)\b|"""
    r"""["'][^"'\s]*__(acks|heartbeats)__"""
)


def test_no_key_is_spelled_outside_rediskeys() -> None:
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if path.name == "rediskeys.py" or "data" in path.relative_to(GATEWAY).parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _INLINE.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == [], "build keys with gateway.infra.rediskeys:\n" + "\n".join(found)


def _lua_files() -> list[Path]:
    return sorted(GATEWAY.glob("*/lua/*.lua"))


def test_lua_files_ship_as_package_data_and_are_loaded() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = data["tool"]["setuptools"]["package-data"]["gateway"]
    assert _lua_files(), "no .lua file found"
    for path in _lua_files():
        relative = path.relative_to(GATEWAY).as_posix()
        assert any(fnmatch(relative, g) for g in globs), f"{relative} is not in pyproject's package-data"
        owners = [p for p in path.parent.parent.glob("*.py") if f'"{path.name}"' in p.read_text(encoding="utf-8")]
        assert owners, f"{relative} is loaded by no module beside it"


def test_scripts_are_read_once_at_import() -> None:
    from gateway.inbox import intake
    from gateway.messaging import jobs
    from gateway.outbox import store

    loaded: dict[str, Callable[[], str]] = {
        "outbox/lua/claim.lua": lambda: store.CLAIM_LUA,
        "outbox/lua/report.lua": lambda: store._REPORT,
        "inbox/lua/accept.lua": lambda: intake._ACCEPT,
        "inbox/lua/claim_thread.lua": lambda: intake._CLAIM,
        "inbox/lua/close_thread.lua": lambda: intake._CLOSE,
        "inbox/lua/desk.lua": lambda: intake._DESK,
        "messaging/lua/enqueue.lua": lambda: jobs._ENQUEUE,
    }
    assert sorted(loaded) == [p.relative_to(GATEWAY).as_posix() for p in _lua_files()]
    for relative, text in loaded.items():
        assert text() == (GATEWAY / relative).read_text(encoding="utf-8")
    assert store._CLAIM == store.CLAIM_LUA + "return claim_then(KEYS, ARGV)\n"


def test_the_dramatiq_pin_is_one_minor_version() -> None:
    """Three scripts write into dramatiq's private Redis layout: an upgrade is a decision, taken
    with tests/integration/test_dramatiq_layout.py, not something a resolver does."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (spec,) = [d for d in data["project"]["dependencies"] if d.startswith("dramatiq")]
    match = re.fullmatch(r"dramatiq\[redis\]>=(\d+)\.(\d+)(\.\d+)?,<(\d+)\.(\d+)", spec)
    assert match, spec
    major, minor, _, upper_major, upper_minor = match.groups()
    assert (int(upper_major), int(upper_minor)) == (int(major), int(minor) + 1), spec
    from importlib.metadata import version

    assert version("dramatiq").split(".")[:2] == [major, minor]
