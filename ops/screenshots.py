"""Regenerate the staff console's screenshots in docs/: ``python -m ops.screenshots [--out DIR]``.

Runs the console's browser tests (tests/console/browser: Debian's chromium driven by Playwright,
against real `gateway run` / `gateway worker` processes) with ``GATEWAY_SCREENSHOTS`` set, so
that the tests write their screenshots there instead of their tmp dir:

* ``console-inbox.png``: the inbox at 1280x800, a citizen's text just arrived live;
* ``console-thread.png``: a thread after an answer went out (the whole page);
* ``console-status.png``: the telecom team's status page;
* ``console-phone.png``: the inbox at phone width (390x844).

The complaint queue takes texts in office hours only (rules/routing.yaml), so the tests date
their citizens' texts back to the last office hour of a working day: run this on a weekday
between 09:00 and 18:00 Seoul time for an inbox of fresh texts; at other times they show as
waiting too long (오래 기다림), which is true but a less typical picture.

Exit status: the tests' (0 when they passed and every screenshot was written), 1 when a
screenshot is missing. Look at the PNGs before committing them (Hangul needs fonts-nanum:
ops/bootstrap.sh installs it; without it the text renders as boxes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ("console-inbox.png", "console-thread.png", "console-status.png", "console-phone.png")
TESTS = "tests/console/browser/test_console_browser.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write the PNGs (default: docs/)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    before = {name: (out / name).stat().st_mtime_ns if (out / name).exists() else None for name in SHOTS}
    env = dict(os.environ, GATEWAY_SCREENSHOTS=str(out))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS], cwd=ROOT, env=env, check=False
    )
    stale = [n for n in SHOTS if not (out / n).exists() or (out / n).stat().st_mtime_ns == before[n]]
    for name in SHOTS:
        print(f"{'missing' if name in stale else 'written'}: {out / name}")
    if done.returncode != 0:
        return done.returncode
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
