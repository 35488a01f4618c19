"""Composition-root pieces: configuration errors, rules hot reload keeping the last good rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.app.gateway import RulesHolder, build_carrier
from gateway.errors import CarrierError, ConfigError
from gateway.infra.config import load_config
from tests.conftest import RULES


def test_default_config_loads() -> None:
    config = load_config()
    assert config.pbxes[0].trunks == ("carrier",)
    assert config.rules_dir == RULES


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("pbx:\n  - name: a\n    host: h\n    username: u\n    secret_env: s\n", "gateway.yaml:5: pbx[0].secret_env"),
        (
            "pbx:\n  - name: a\n    host: h\n    username: u\n    secret_env: S\n    port: 99999\n",
            "gateway.yaml:6: pbx[0].port",
        ),
        ("pbx: []\n", "gateway.yaml:1: pbx"),
        ("pbx:\n  - name: a\n    host: h\n    username: u\n    secret_env: S\nredis: {urll: x}\n", "urll"),
        (
            "pbx:\n  - {name: a, host: h, username: u, secret_env: S}\n"
            "  - {name: a, host: h, username: u, secret_env: S}\n",
            "unique",
        ),
    ],
)
def test_config_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    assert where in str(exc.value)


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    config = load_config(None, {})
    with pytest.raises(ConfigError, match="GATEWAY_AMI_SECRET"):
        config.pbxes[0].secret({})
    with pytest.raises(ConfigError, match="GATEWAY_NUMBER_KEY"):
        config.number_key({"GATEWAY_NUMBER_KEY": "short"})
    with pytest.raises(CarrierError, match="SKT_TOKEN"):
        build_carrier(
            "skt", {"kind": "http", "profile": "skt", "base_url": "http://127.0.0.1:9", "token_env": "SKT_TOKEN"}, {}
        )
    with pytest.raises(ConfigError, match="unknown kind"):
        build_carrier("x", {"kind": "pigeon"}, {})


def test_rules_reload_keeps_last_good(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES, rules_dir)
    holder = RulesHolder(rules_dir)
    good = holder.rules.version
    directory = rules_dir / "directory.yaml"
    directory.write_text(
        directory.read_text(encoding="utf-8").replace('"2001-2004"', '"20a1-2004"', 1), encoding="utf-8"
    )
    assert holder.reload() is False
    assert holder.rules.version == good and "20a1" in holder.last_error
    assert "directory.yaml:" in holder.last_error
    shutil.copy(RULES / "directory.yaml", directory)
    assert holder.reload() is True and holder.last_error == ""


def test_rules_change_on_disk_is_noticed(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(RULES, rules_dir)
    holder = RulesHolder(rules_dir)
    assert holder.reload_if_changed() is None
    routing = rules_dir / "routing.yaml"
    routing.write_text(routing.read_text(encoding="utf-8").replace("09:00-18:00", "25:00-18:00", 1), encoding="utf-8")
    assert holder.reload_if_changed() is False  # broken: the last good rules stay live
    assert "25:00" in holder.last_error and holder.routing is not None
    shutil.copy(RULES / "routing.yaml", routing)
    assert holder.reload_if_changed() is True and holder.last_error == ""


def test_impossible_date_is_a_located_problem(tmp_path: Path) -> None:
    from gateway.errors import RulesError
    from gateway.infra.yamldoc import parse_yaml

    with pytest.raises(RulesError) as exc:
        parse_yaml("a: 1\nb: 2026-02-30\n", "rules/x.yaml")
    assert exc.value.problems[0].startswith("rules/x.yaml:2:") and "2026-02-30" in exc.value.problems[0]
