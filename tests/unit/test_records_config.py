"""gateway.yaml `records:`: defaults, the URL's environment variable and relative SQLite files,
retention periods, and errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.infra.config import RETENTION_DEFAULTS, load_config

PBX = "pbx:\n  - {name: a, host: h, username: u, secret_env: S}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(PBX + text, encoding="utf-8")
    return path


def test_defaults_and_relative_sqlite_next_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    records = config.records
    assert records.url == f"sqlite:///{tmp_path / 'conf' / 'records.sqlite3'}"
    assert dict(records.retention_days) == {"messages": 365, "calls": 365, "sends": 365, "access": 730}
    assert (records.purge_at, records.office_hours) == ("03:30", "09:00-18:00")
    assert (records.purge_time.hour, records.office_start.hour, records.office_end.hour) == (3, 9, 18)
    assert (records.stream_maxlen, records.batch_size) == (1_000_000, 1000)
    assert config.records_url({}) == records.url
    assert config.records_url({"GATEWAY_RECORDS_URL": "postgresql://gw@db/x"}) == "postgresql://gw@db/x"
    assert config.records_url({"GATEWAY_RECORDS_URL": ""}) == records.url


def test_a_records_section(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "records:\n  url_env: MY_DB\n  url: sqlite:////var/lib/gw/r.sqlite3\n"
            "  retention_days: {messages: 30, access: 1000}\n  purge_at: '04:15'\n"
            "  office_hours: '08:30-17:30'\n  batch_size: 500\n",
        ),
        environ={},
    )
    assert config.records.url == "sqlite:////var/lib/gw/r.sqlite3"
    assert config.records.retention_days == {**RETENTION_DEFAULTS, "messages": 30, "access": 1000}
    assert config.records_url({"MY_DB": "postgresql://x@y/z"}) == "postgresql://x@y/z"
    assert config.records.batch_size == 500


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("records:\n  retention_days:\n    texts: 30\n", "gateway.yaml:5: records.retention_days: unknown key 'texts'"),
        ("records:\n  retention_days:\n    calls: 0\n", "gateway.yaml:5: records.retention_days.calls"),
        ("records:\n  retention_days:\n    calls: soon\n", "gateway.yaml:5: records.retention_days.calls"),
        ("records:\n  purge_at: '25:00'\n", "gateway.yaml:4: records.purge_at: '25:00' is not a time of day"),
        ("records:\n  office_hours: '18:00-09:00'\n", "gateway.yaml:4: records.office_hours: '18:00-09:00' ends"),
        ("records:\n  url: mysql://db/x\n", "gateway.yaml:4: records.url: 'mysql://db/x' is not a records URL"),
        ("records:\n  batch: 5\n", "gateway.yaml:4: records: unknown key 'batch' (did you mean 'batch_size'?)"),
    ],
)
def test_records_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    assert where in str(exc.value)
