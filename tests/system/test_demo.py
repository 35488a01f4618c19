"""`gateway demo`, the README's first command, as a user runs it: recorded PBX traffic is
lettered, citizens' sample texts are routed and answered, and Ctrl-C (SIGINT to the terminal's
whole process group) stops it cleanly, its private Redis last."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _wait_for(path: Path, pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text("utf-8", errors="replace")
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not seen within {timeout_s} s:\n{path.read_text('utf-8', errors='replace')}")


def _rules_in_quiet_hours(tmp_path: Path) -> Path:
    """The project's rules with the quiet hours moved around the present moment (Asia/Seoul), so
    that a post-call is deferred whatever the time of day the test runs at."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    now = datetime.now(ZoneInfo("Asia/Seoul"))
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=2)).strftime("%H:%M")
    messaging = rules / "messaging.yaml"
    text, n = re.subn(
        r"^quiet_hours: .*$",
        f'quiet_hours: {{start: "{start}", end: "{end}"}}',
        messaging.read_text("utf-8"),
        flags=re.M,
    )
    assert n == 1
    messaging.write_text(text, "utf-8")
    return rules


def test_demo_runs_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    rules = _rules_in_quiet_hours(tmp_path)
    with out.open("wb") as sink:
        # A session of its own stands in for the terminal: Ctrl-C signals the whole group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--http-port", "0", "--speed", "4", "--rules", str(rules)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = _wait_for(out, r"\[lettering\] .* delivered", 60)
        text = _wait_for(out, r"(\[sms in\].*HTTP 200[\s\S]*){3}", 30)
        # A post-call deferred out of quiet hours: the worker holds it, and must hand it back to
        # Redis when it stops (the shutdown that failed when Ctrl-C had already killed Redis).
        text = _wait_for(out, r"\[postcall\] .*: deferred", 30)
        time.sleep(1.0)
        port = int(re.search(r"private redis-server on redis://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = out.read_text("utf-8", errors="replace")
    assert "demo: stopped" in text and "Traceback" not in text, text[-3000:]
    assert "without Redis" not in text  # Redis outlived the Ctrl-C: the shutdown went in order
    assert re.search(r"\[sent\] .*auto_reply:demo-sms-1 .*accepted", text)
    assert re.search(r"\[sent\] .*opt_out_confirm:demo-sms-3 .*accepted", text)
    # notify.yaml's complaint webhook reached the stand-in complaint system, signed with the
    # secret the worker was given (not only the process environment), and nothing logged an error.
    assert re.search(r"\[complaint\] received \(signature ok\): queue complaint .*010-\*\*\*\*-4444", text)
    assert re.search(r"\[notified\] .*queue complaint -> webhook: 200", text)
    assert " ERROR " not in text, text[-3000:]
    assert "010-****-" in text and not re.search(r"\b010\d{8}\b", text)  # numbers masked
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the demo stopped its Redis on the way out
