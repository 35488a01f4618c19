"""ops/: the example configuration loads and builds, redis.conf says (and Redis accepts) what the
runbook relies on, the Prometheus alerts name only metrics a real scrape has, manager.conf asks
for exactly the events the gateway tracks, and the runbook documents every secret."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from adapters.sandbox import SandboxCarrier
from gateway.app.gateway import Gateway, Overrides, build_alimtalk, build_carrier, build_sms
from gateway.app.replay import FAST_RECONNECT, demo_environ
from gateway.app.worker import build_worker
from gateway.calls.pbx.mapping import TRACKED_EVENTS
from gateway.calls.pbx.protocol import CLIENT_EVENTS
from gateway.infra.config import load_config
from gateway.sim.amiserver import AmiServer, Transcript
from tests.conftest import ROOT, RULES

OPS = ROOT / "ops"
EXAMPLE = OPS / "gateway.example.yaml"
RUNBOOK = OPS / "runbook.md"
ALERTS = OPS / "prometheus" / "alerts.yml"


def _env_names(node: Any) -> Iterator[str]:
    """Every environment variable a configuration names (the values of its `*_env` keys)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if str(key).endswith("_env") and isinstance(value, str):
                yield value
            else:
                yield from _env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_names(item)


# ------------------------------------------------------------------ gateway.example.yaml


def test_example_config_loads_and_its_providers_build() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.rules_dir == Path("/etc/gateway/rules")
    assert config.shutdown_timeout_s == 20 and config.ready_timeout_s == 30
    fake = {name: "x" * 24 for name in _env_names(yaml.safe_load(EXAMPLE.read_text()))}
    for name, spec in config.carriers.items():
        build_carrier(name, spec, fake)
    for name, spec in config.alimtalk.items():
        build_alimtalk(name, spec, fake)
    for name, spec in config.sms.items():
        build_sms(name, spec, fake)
    assert config.number_key(fake) and config.sealer({config.data_key_env: "k1:" + "A" * 43 + "="})


def test_runbook_documents_every_secret_of_the_example() -> None:
    text = RUNBOOK.read_text()
    names = {"REDIS_URL", *_env_names(yaml.safe_load(EXAMPLE.read_text()))}
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"ops/runbook.md does not mention {missing}"


# ------------------------------------------------------------------ redis.conf


def _redis_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def test_redis_conf_has_the_settings_the_gateway_relies_on() -> None:
    conf = _redis_directives((OPS / "redis.conf").read_text())
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert conf["maxmemory-policy"] == ["noeviction"]
    assert conf["protected-mode"] == ["yes"]
    assert conf["cluster-enabled"] == ["no"]
    assert conf["no-appendfsync-on-rewrite"] == ["no"]
    bind = conf["bind"][0].split()
    assert "127.0.0.1" in bind and "0.0.0.0" not in bind and "*" not in bind
    assert conf["include"] == ["/etc/redis/gateway-users.conf"]
    assert "requirepass" not in conf  # the ACL file holds the users


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing (ops/bootstrap.sh installs it)")
def test_redis_accepts_the_fragment_and_its_acl_keeps_the_gateway_from_admin_commands(tmp_path: Path) -> None:
    """The fragment as Debian's redis-server reads it, with host paths moved into tmp_path."""
    users = tmp_path / "users.conf"
    # The gateway's ACL line exactly as ops/redis.conf documents it (its password replaced).
    documented = re.search(r"^#\s*(user gateway on .*)$", (OPS / "redis.conf").read_text(), flags=re.M)
    assert documented, "ops/redis.conf documents the gateway's ACL user"
    gateway_acl = re.sub(r">\S+", ">gw-secret-0123456789", documented.group(1).strip())
    users.write_text("user default off\n" + gateway_acl + "\n" + "user admin on >admin-secret-0123456789 ~* &* +@all\n")
    sock = tmp_path / "redis.sock"
    text = (OPS / "redis.conf").read_text()
    text = re.sub(r"^bind .*$", "bind 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^port .*$", "port 0", text, flags=re.M)
    text = re.sub(r"^unixsocket .*$", f"unixsocket {sock}", text, flags=re.M)
    text = re.sub(r"^include .*$", f"include {users}", text, flags=re.M)
    text = re.sub(r"^dir .*$", f"dir {tmp_path}", text, flags=re.M)
    text = re.sub(r"^supervised .*$", "supervised no", text, flags=re.M)
    (tmp_path / "redis.conf").write_text(text + '\ndaemonize no\nlogfile ""\n')
    proc = subprocess.Popen(
        ["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        admin = redis.Redis(unix_socket_path=str(sock), username="admin", password="admin-secret-0123456789")
        gateway = redis.Redis(unix_socket_path=str(sock), username="gateway", password="gw-secret-0123456789")
        try:
            assert admin.config_get("appendonly") == {"appendonly": "yes"}
            assert admin.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert gateway.ping()
            assert gateway.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v") == b"OK"
            assert gateway.info("replication")["role"] == "master"  # granted: /health's replication report
            for forbidden in (gateway.flushall, gateway.config_resetstat, lambda: gateway.keys("*")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    forbidden()
        finally:
            admin.close()
            gateway.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ alerts.yml


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        rules += group["rules"]
    return rules


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_alert_rules_are_well_formed_and_point_at_the_runbook() -> None:
    rules = _alerts()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    anchors = _anchors(RUNBOOK.read_text())
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "ops/runbook.md" and anchor in anchors, (rule["alert"], anchor)


def _metric_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def _gateway_scrape(redis_url: str) -> str:
    """GET /metrics of a running Gateway that has handled one recorded call with lettering."""
    from aiohttp import ClientSession

    from gateway.app.httpapps import make_app
    from gateway.infra.http import HttpServer

    class Sink:
        def decision(self, record: Mapping[str, Any]) -> None:
            pass

    config = load_config()
    environ = demo_environ(config, os.environ)
    server = AmiServer([Transcript.named("answered_mobile")], secret=environ["GATEWAY_AMI_SECRET"], speed="fast")
    host, port = await server.start()
    carrier = SandboxCarrier()
    gw = Gateway(
        config,
        Sink(),
        environ=environ,
        overrides=Overrides(
            redis_url=redis_url,
            rules_dir=RULES,
            pbx_address=(host, port),
            carriers={"sandbox": carrier},
            ami=dict(FAST_RECONNECT),
        ),
    )
    await gw.start()
    http = HttpServer(make_app(gw.health, gw.reports, gw.http_routes), "127.0.0.1", 0)
    http_host, http_port = await http.start()
    try:
        deadline = time.monotonic() + 10
        while len(carrier.requests) < 1:
            assert time.monotonic() < deadline, "no lettering"
            await asyncio.sleep(0.01)
        await gw.pipeline.drain()
        async with ClientSession() as session, session.get(f"http://{http_host}:{http_port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()
    finally:
        await http.stop()
        await gw.stop()
        await server.stop()


def _worker_scrape(redis_url: str) -> str:
    """The `gateway worker` registry (its /metrics), built the way `gateway worker` builds it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.app.recordsthread import RecordsThread
    from gateway.app.workerhttp import WorkerCollector

    config = load_config()
    broker, runtime = build_worker(config, environ=demo_environ(config, os.environ), redis_url=redis_url)
    registry = CollectorRegistry(auto_describe=False)
    # With its records thread (the writer's figures), on a throwaway SQLite file.
    with tempfile.TemporaryDirectory() as tmp:
        records = RecordsThread(redis_url, f"sqlite:///{tmp}/records.sqlite3")
        records.start()
        registry.register(WorkerCollector(runtime, broker, None, records))
        try:
            deadline = time.monotonic() + 10
            while records.writer is None:
                assert time.monotonic() < deadline, f"records writer not started: {records.error}"
                time.sleep(0.01)
            return generate_latest(registry).decode()
        finally:
            records.stop(5.0)
            broker.close()


async def test_every_metric_in_the_alerts_exists_in_a_real_scrape(redis_url: str) -> None:
    scraped = _metric_names(await _gateway_scrape(redis_url)) | _metric_names(_worker_scrape(redis_url))
    used = set()
    for rule in _alerts():
        used |= set(re.findall(r"\b(gateway_[a-z0-9_]+)\b", rule["expr"]))
        assert set(re.findall(r"\b([a-z_]+)\s*\{", rule["expr"])) <= scraped | {"up"}, rule["alert"]
    assert used, "no gateway metric in the alerts?"
    missing = sorted(used - scraped)
    assert not missing, f"alerts.yml uses metrics no scrape has: {missing}\nscraped: {sorted(scraped)}"


# ------------------------------------------------------------------ asterisk/manager.conf


def test_manager_conf_user_gets_only_the_events_and_rights_the_gateway_needs() -> None:
    text = (OPS / "asterisk" / "manager.conf").read_text()
    section = text.split("[gateway]", 1)[1]
    settings: dict[str, list[str]] = {}
    for raw in section.splitlines():
        line = raw.split(";", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["read"] == ["call,system"]
    assert settings["write"] == ["reporting"]  # CoreShowChannels; Ping/Login/Logoff need no class
    assert settings["deny"] == ["0.0.0.0/0.0.0.0"] and settings["permit"]
    pattern = re.compile(r"eventfilter\(action\(include\),name\((\w+)\)\)")
    filtered = {m.group(1) for key in settings if (m := pattern.fullmatch(key))}
    assert filtered >= TRACKED_EVENTS | CLIENT_EVENTS
    assert filtered - TRACKED_EVENTS - CLIENT_EVENTS <= {"CoreShowChannelsComplete"}
    assert "timestampevents = yes" in text


# ------------------------------------------------------------------ bootstrap.sh


def test_bootstrap_installs_the_tools_the_tests_run() -> None:
    """Each Debian tool the suite runs is installed when missing (and only then)."""
    text = (OPS / "bootstrap.sh").read_text()
    for tool, package in (("redis-server", "redis-server"), ("systemd-analyze", "systemd"), ("promtool", "prometheus")):
        assert f"command -v {tool} >/dev/null 2>&1 || packages+=({package})" in text, tool
