#!/usr/bin/env bash
# Installs what the gateway needs on a fresh Debian machine with Python 3.11:
# Debian's redis-server (demo and tests start private instances of it), postgresql (the
# records store's tests start a private server), Pango, fonts-nanum and poppler-utils (the PDF
# report and its tests), Debian's systemd
# (for systemd-analyze: the tests verify the units in systemd/), Debian's prometheus (for
# promtool: the tests lint /metrics and the alert rules) and a virtualenv in .venv
# with the project and its development tools.
# Idempotent and quick when nothing changed: it is the first half of both README commands.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: redis-server (the demo and the tests start private instances of it) and
# systemd for systemd-analyze (tests/system/test_systemd_units.py verifies the units in systemd/;
# in a container it only installs the tools: nothing is started).
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
# Debian's redis-sentinel: the Sentinel failover tests (gateway/sim/sentinelproc.py; without it
# they fall back on `redis-server CONF --sentinel`, the same program) and ops/sentinel.conf's unit.
command -v redis-sentinel >/dev/null 2>&1 || packages+=(redis-sentinel)
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
# promtool (Debian's prometheus package): tests/system/test_promtool.py lints /metrics and alerts.yml.
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
# PostgreSQL (Debian's postgresql): the records store's tests run on it too, a private server
# started by the tests (gateway/sim/pgproc.py) from /usr/lib/postgresql/*/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql)
# The monthly PDF report (WeasyPrint): Pango for layout, Debian's fonts-nanum for Hangul (no font
# is fetched from outside), and poppler-utils (pdftoppm) with which the tests render its pages.
[ -n "$(ldconfig -p 2>/dev/null | grep 'libpangoft2-1.0.so.0' || true)" ] || packages+=(libpango-1.0-0 libpangoft2-1.0-0)
[ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || packages+=(fonts-nanum fontconfig)
command -v pdftoppm >/dev/null 2>&1 || packages+=(poppler-utils)
# The staff console's browser tests: Debian's chromium, driven by Playwright from PyPI through
# executable_path (never `playwright install`: it downloads a browser, and there is no internet).
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian's ${packages[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
    # Debian starts a system-wide Redis (and Prometheus, PostgreSQL) where systemd runs; the
    # gateway's tests use none of them: they start private servers and run promtool only.
fi

PY=${PYTHON:-python3}
stamp=.venv/.bootstrap-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: creating .venv and installing the project" >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e '.[dev]' >&2
    echo "$want" > "$stamp"
fi
