"""`gateway staff ...` and `gateway audit ...` as subprocesses (`python -m gateway`) against a
temporary gateway.yaml and its SQLite records database."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from gateway.domain.records import SEOUL
from gateway.infra.config import DEFAULT_CONFIG
from tests.conftest import ROOT
from tests.staff.conftest import NUMBER_KEY, make_staff


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """(gateway.yaml, the records database file it names)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8") + "\nrecords:\n  url: sqlite:///staff.sqlite3\n")
    return config, tmp_path / "staff.sqlite3"


def gw(config: Path, *argv: str, stdin: str = "", number_key: str = NUMBER_KEY) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_NUMBER_KEY"] = number_key
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *argv[:2], *argv[2:], "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def test_accounts_from_the_command_line(setup: tuple[Path, Path]) -> None:
    config, db = setup
    code, out, err = gw(
        config, "staff", "add", "kim", "--name", "김민원", "--role", "staff", "--queues", "duty,complaint"
    )
    assert code == 0, err
    temporary = re.search(r"temporary password .*: (\S+)$", out, re.M)
    assert temporary
    code, _, err = gw(
        config, "staff", "add", "boss", "--name", "관리자", "--role", "admin", "--password-stdin", stdin="1234\n"
    )
    assert code == 2 and "비밀번호" in err
    code, _, err = gw(
        config,
        "staff",
        "add",
        "boss",
        "--name",
        "관리자",
        "--role",
        "admin",
        "--queues",
        "*",
        "--password-stdin",
        stdin="Admin-Pass-2026!\n",
    )
    assert code == 0, err
    code, _, err = gw(config, "staff", "add", "kim", "--name", "또", "--role", "staff")
    assert code == 2 and "이미" in err
    code, out, _ = gw(config, "staff", "token", "kim", "--label", "연동")
    token = re.search(r"^(gwt_\S+)$", out, re.M)
    assert code == 0 and token
    code, out, _ = gw(config, "staff", "list")
    assert code == 0 and "kim" in out and "boss" in out and "complaint,duty" in out and "$argon2" not in out
    assert token.group(1).split(".")[1] not in out

    staff = await make_staff(f"sqlite:///{db}")
    try:
        signed = await staff.directory.login("kim", temporary.group(1), ip="x")
        assert signed.account is not None and signed.account.must_change_password
        assert await staff.directory.account_for_token(token.group(1)) is not None
        assert (await staff.directory.login("boss", "Admin-Pass-2026!", ip="x")).account is not None
    finally:
        await staff.store.close()

    token_id = token.group(1).split(".")[0]
    assert gw(config, "staff", "revoke", token_id)[0] == 0
    assert "already revoked" in gw(config, "staff", "revoke", token_id)[1]
    assert gw(config, "staff", "disable", "kim")[0] == 0
    assert "disabled" in gw(config, "staff", "list")[1]
    assert gw(config, "staff", "enable", "kim")[0] == 0
    code, out, _ = gw(config, "staff", "reset", "kim")
    assert code == 0 and re.search(r"temporary password .*: \S+$", out, re.M)
    assert gw(config, "staff", "unlock", "kim")[0] == 0
    code, _, err = gw(config, "staff", "disable", "nobody")
    assert code == 1 and "nobody" in err

    code, out, _ = gw(config, "audit", "list", "--action", "account_add")
    assert code == 0 and out.count("계정 생성") == 2
    actor = re.search(r"(cli:\S+)", out)
    assert actor


async def test_verify_export_and_a_tampered_chain(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, db = setup
    for user in ("kim", "lee", "park"):
        assert gw(config, "staff", "add", user, "--name", user, "--role", "staff")[0] == 0
    code, out, _ = gw(config, "audit", "verify")
    assert code == 0 and "accounts: 3 record(s), chain intact" in out
    code, _, err = gw(
        config, "audit", "export", "--month", "2026-13", "--reason", "점검", "--out", str(tmp_path / "a.csv")
    )
    assert code == 2 and "--month" in err
    code, _, err = gw(config, "audit", "export", "--month", "2026-12", "--out", str(tmp_path / "a.csv"))
    assert code == 2 and "--reason" in err  # required
    month = datetime.now(SEOUL).strftime("%Y-%m")
    target = tmp_path / "month.csv"
    code, out, err = gw(config, "audit", "export", "--month", month, "--reason", "월간 점검", "--out", str(target))
    assert code == 0, err
    body = target.read_bytes()
    assert body.startswith("\ufeff".encode()) and body.decode("utf-8-sig").count("계정 생성") == 3
    code, out, _ = gw(config, "audit", "list", "--action", "audit_export")
    assert code == 0 and "월간 점검" in out

    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE audit_log SET target = 'someone' WHERE chain = 'accounts' AND seq = 2")
    code, out, _ = gw(config, "audit", "verify")
    assert code == 1 and "accounts: BROKEN at record 2" in out and "altered" in out


def test_without_the_number_key_it_refuses(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, _, err = gw(config, "staff", "list", number_key="short")
    assert code == 2 and "GATEWAY_NUMBER_KEY" in err
