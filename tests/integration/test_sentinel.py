"""`redis+sentinel://` (issue #17, item 1): a primary, a replica and three sentinels on loopback
(`down-after-milliseconds` 1000); the primary is SIGKILLed and every component must find the
new primary by itself: the lean connection (`Wire`), redis-py's pool (`connect`), the dramatiq
broker's client, the console's event hub; then two `gateway run` and two `gateway worker` under a
load of signed webhooks and recorded calls, through two SIGKILLed primaries (the first one back
as a replica in between) and a planned switch-over (items 4 and 5). Also: the ops files
(ops/sentinel.conf, the users file ops/redis.conf documents) and the replication metrics and
their alerts.

The issue's bounds: a new primary within 5 s of the kill, intake answering 2xx again within 10 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import ClientSession
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.app.metrics import replication_families
from gateway.inbox.desk import EventHub
from gateway.infra import redisurl
from gateway.infra.rediskeys import CONSOLE_EVENTS
from gateway.infra.wire import Wire, wire_like
from gateway.messaging.jobs import make_broker
from gateway.outbox.store import connect
from gateway.sim.redisproc import RedisProcess, free_port
from gateway.sim.sentinelproc import SentinelSet, sentinel_command
from tests.conftest import ROOT
from tests.support.fault_harness import (
    INVALID_CITIZEN,
    Harness,
    Ledger,
    Post,
    WebhookLoad,
    check_lettering,
    check_messages,
    harness,
    inbox_counts,
)

NEW_PRIMARY_S = 5.0  # the bound for the sentinels
INTAKE_BACK_S = 10.0  # and for 2xx again


# ------------------------------------------------------------------ the URL (pure)


def test_url_shapes() -> None:
    parsed = redisurl.parse(
        "redis+sentinel://:node%40pw@10.0.0.1:26379,10.0.0.2,[::1]:5000/gwprimary/2?sentinel_password_env=SP",
        {"SP": "sentinel-pw"},
    )
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 5000))
    assert (parsed.master, parsed.db, parsed.password, parsed.username) == ("gwprimary", 2, "node@pw", None)
    assert parsed.sentinel_password == "sentinel-pw"
    assert "pw" not in parsed.describe()
    default = redisurl.parse("redis+sentinel://h:1/m", {"REDIS_SENTINEL_PASSWORD": "x"})
    assert (default.db, default.sentinel_password, default.password) == (0, "x", None)
    for bad in ("redis+sentinel://h:1/", "redis+sentinel://h:1/m/x", "redis+sentinel:///m", "redis://h/0"):
        with pytest.raises(ValueError):
            redisurl.parse(bad, {})
    assert (
        redisurl.with_password_env("redis+sentinel://h/m", "MY_PW")
        == "redis+sentinel://h/m?sentinel_password_env=MY_PW"
    )
    assert redisurl.with_password_env("redis://h/0", "MY_PW") == "redis://h/0"


def test_config_names_the_sentinel_password_variable(tmp_path: Path) -> None:
    from gateway.infra.config import load_config

    path = tmp_path / "gw.yaml"
    path.write_text(
        "pbx: [{name: p, host: 127.0.0.1, username: u, secret_env: S}]\n"
        "redis: {url_env: REDIS_URL, sentinel_password_env: SENTINELS_PW}\n"
    )
    config = load_config(path)
    url = config.resolved_redis_url({"REDIS_URL": "redis+sentinel://h:1/m"})
    assert redisurl.parse(url, {"SENTINELS_PW": "s3"}).sentinel_password == "s3"


# ------------------------------------------------------------------ ops/sentinel.conf


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing (ops/bootstrap.sh)")
async def test_example_sentinel_conf_runs_and_the_gateway_authenticates(tmp_path: Path) -> None:
    """ops/sentinel.conf as Debian's sentinel reads it (host paths, addresses and the data nodes'
    credentials swapped for a private Redis); the gateway's resolver finds the primary with the
    sentinels' password from the environment, and is refused without it."""
    primary = RedisProcess().start()
    port = free_port()
    proc = _example_sentinel(tmp_path, port, primary.port)
    try:
        url = f"redis+sentinel://127.0.0.1:{port}/gateway/0"
        with_pw = redisurl.parse(url, {"REDIS_SENTINEL_PASSWORD": "SENTINEL-PASSWORD"})
        started = time.monotonic()
        while True:
            try:
                assert await redisurl.resolve_master(with_pw) == ("127.0.0.1", primary.port)
                break
            except RedisConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() - started < 10, "the sentinel never named the primary"
                await asyncio.sleep(0.1)
        client = redis.Redis(port=port, password="SENTINEL-PASSWORD", decode_responses=True)
        state: Any = client.sentinel_master("gateway")
        client.close()
        assert (int(state["quorum"]), int(state["down-after-milliseconds"])) == (2, 1500)
        with pytest.raises(RedisConnectionError, match=r"NOAUTH|Authentication"):
            await redisurl.resolve_master(redisurl.parse(url, {}))
    finally:
        proc.terminate()
        proc.wait(5)
        primary.cleanup()


def _example_sentinel(tmp_path: Path, port: int, primary_port: int) -> subprocess.Popen[bytes]:
    """A sentinel from ops/sentinel.conf, on loopback, monitoring 127.0.0.1:`primary_port`."""
    lines = []
    for raw in (ROOT / "ops" / "sentinel.conf").read_text().splitlines():
        key = raw.split(" ", 2)[:2]
        if key[:1] in (["supervised"], ["pidfile"], ["logfile"]) or key in (
            ["sentinel", "auth-user"],
            ["sentinel", "auth-pass"],
        ):
            continue  # systemd's and the host's paths; the private Redis has no users
        line = raw.replace("bind 127.0.0.1 -::1 10.10.0.20", "bind 127.0.0.1")
        line = line.replace("port 26379", f"port {port}").replace("dir /var/lib/redis", f"dir {tmp_path}")
        lines.append(line.replace("10.10.0.20 6379", f"127.0.0.1 {primary_port}"))
    conf = tmp_path / "sentinel.conf"
    conf.write_text("\n".join(lines) + "\n")
    return subprocess.Popen(sentinel_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# ------------------------------------------------------------------ ops/redis.conf's users


def _documented_users() -> dict[str, str]:
    """The ACL lines ops/redis.conf documents for /etc/redis/gateway-users.conf, by user."""
    text = (ROOT / "ops" / "redis.conf").read_text()
    lines = re.findall(r"^#\s+(user \S+ .*)$", text, flags=re.M)
    return {line.split()[1]: line for line in lines}


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing (ops/bootstrap.sh)")
def test_documented_acl_lets_the_gateway_read_replication_and_nothing_more(tmp_path: Path) -> None:
    """The users file exactly as ops/redis.conf documents it: the gateway reads INFO replication
    and ROLE (the lag report, the replica check) and still cannot administer a node; the
    maintenance user can pause and demote a node (the planned switch-over) and cannot write."""
    users = _documented_users()
    assert {"default", "gateway", "monitor", "sentinel", "replica", "maintenance"} <= set(users)
    assert users["gateway"].endswith("+@all -@admin -@dangerous +info +role")
    acl = tmp_path / "users.acl"
    acl.write_text("\n".join(users.values()) + "\n")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--aclfile", str(acl), "--save", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            try:
                gateway: Any = redis.Redis(port=port, username="gateway", password="LONG-RANDOM-PASSWORD")
                gateway.ping()
                break
            except RedisConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        maintenance: Any = redis.Redis(port=port, username="maintenance", password="MAINTENANCE-PASSWORD")
        try:
            assert gateway.info("replication")["role"] == "master"
            assert gateway.execute_command("ROLE")[0] == b"master"
            assert gateway.set("k", "v")
            denied = (
                lambda: gateway.config_get("maxmemory"),
                gateway.flushall,
                lambda: gateway.keys("*"),
                lambda: gateway.execute_command("REPLICAOF", "NO", "ONE"),
                lambda: gateway.execute_command("CLIENT", "PAUSE", "10", "WRITE"),
                lambda: gateway.execute_command("SHUTDOWN", "NOSAVE"),
            )
            for command in denied:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    command()
            assert maintenance.execute_command("CLIENT", "PAUSE", "10", "WRITE") == b"OK"
            assert maintenance.execute_command("CLIENT", "UNPAUSE") == b"OK"
            assert maintenance.execute_command("REPLICAOF", "NO", "ONE") == b"OK"
            assert maintenance.execute_command("ROLE")[0] == b"master"
            for command in (lambda: maintenance.set("k", "x"), maintenance.flushall, lambda: maintenance.get("k")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    command()
        finally:
            gateway.close()
            maintenance.close()
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------ the topology


@pytest.fixture
async def sentinels() -> AsyncIterator[SentinelSet]:
    topology = SentinelSet(down_after_ms=1000)
    try:
        await asyncio.to_thread(topology.start)
        yield topology
    finally:
        await asyncio.to_thread(topology.cleanup)


async def until_ok(action: Callable[[], Awaitable[Any]], timeout: float) -> float:
    """Retry `action` until it succeeds; the time it took."""
    started = time.monotonic()
    while True:
        try:
            await action()
            return time.monotonic() - started
        except (redis.RedisError, OSError, TimeoutError) as exc:
            assert time.monotonic() - started < timeout, f"still failing after {timeout} s: {exc}"
            await asyncio.sleep(0.05)


pytestmark = pytest.mark.slow


async def test_wire_refuses_a_replica_and_the_resolver_skips_a_dead_sentinel(sentinels: SentinelSet) -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens there
    parsed = redisurl.parse(sentinels.url)
    resolver = redisurl.MasterResolver(
        redisurl.SentinelUrl(sentinels=(dead, *parsed.sentinels), master=parsed.master), timeout_s=0.5
    )
    assert await resolver() == ("127.0.0.1", sentinels.primary.port)
    assert resolver.order[:2] == [parsed.sentinels[0], dead]  # the one that answered: asked first from now on
    with pytest.raises(RedisConnectionError, match="no primary for 'nosuch'"):
        await redisurl.MasterResolver(redisurl.SentinelUrl(sentinels=parsed.sentinels, master="nosuch"), 0.5)()

    async def replica() -> tuple[str, int]:
        return "127.0.0.1", sentinels.replica.port

    wire = Wire(resolver=replica, timeout_s=1.0)
    try:
        with pytest.raises(RedisConnectionError, match="role:slave"):
            await wire.execute("SET", "k", "v")
    finally:
        await wire.aclose()


async def test_every_component_follows_a_failover(sentinels: SentinelSet) -> None:
    url = sentinels.url
    old = sentinels.primary
    wire = Wire.from_url(url, timeout_s=0.5)
    pool = connect(url, timeout_s=0.5)
    derived = wire_like(pool)
    broker = make_broker(url, namespace="sentinel-test")
    hub = EventHub(url, retry_s=0.1)
    await hub.start()
    sub = hub.subscribe()
    try:
        assert await wire.execute("SET", "a", "1") == b"OK"
        assert await pool.set("b", "1")
        assert await derived.execute("SET", "c", "1") == b"OK"
        assert broker.client.set("d", "1")
        assert await hub.wait_connected(5.0)
        assert wire.address == f"127.0.0.1:{old.port}"
        assert redisurl.client_address(broker.client) == f"127.0.0.1:{old.port}"

        killed = time.monotonic()
        old.kill()
        new_port = await asyncio.to_thread(sentinels.wait_for_new_primary, old.port, 15.0)
        failover_s = time.monotonic() - killed
        times = {
            "wire": await until_ok(lambda: wire.execute("SET", "a", "2"), 15.0),
            "pool": await until_ok(lambda: pool.set("b", "2"), 15.0),
            "wire_like": await until_ok(lambda: derived.execute("SET", "c", "2"), 15.0),
            "broker": await until_ok(lambda: asyncio.to_thread(broker.client.set, "d", "2"), 15.0),
        }
        # The hub: subscribed again (on the new primary) and receiving what is published there.
        new_client = redis.Redis(port=new_port)

        async def hub_receives() -> None:
            assert hub.connected and hub.reconnects >= 1, "not subscribed again yet"
            new_client.publish(CONSOLE_EVENTS, json.dumps({"k": "probe"}))
            event = await asyncio.wait_for(sub.__anext__(), 0.5)
            while event.get("k") != "probe":
                event = await asyncio.wait_for(sub.__anext__(), 0.5)

        times["event_hub"] = await until_ok(lambda: _asserting(hub_receives), 15.0)
        since_kill = time.monotonic() - killed
        print(f"\nsentinel failover: new primary after {failover_s:.2f} s; reconnected {times} ({since_kill:.2f} s)")
        assert failover_s <= NEW_PRIMARY_S
        assert wire.address == derived.address == f"127.0.0.1:{new_port}"
        assert redisurl.client_address(broker.client) == f"127.0.0.1:{new_port}"
        info = redisurl.parse_info(await wire.execute("INFO", "replication"))
        report = redisurl.replication_report(info, wire.address)
        assert report["role"] == "master" and report["primary"] == f"127.0.0.1:{new_port}"
        assert new_client.get("a") == b"2" and new_client.get("d") == b"2"
        new_client.close()
    finally:
        await hub.stop()
        await wire.aclose()
        await derived.aclose()
        await pool.aclose()
        broker.client.close()


async def _asserting(check: Callable[[], Awaitable[None]]) -> None:
    """An AssertionError as a retryable failure for `until_ok`."""
    try:
        await check()
    except (AssertionError, TimeoutError) as exc:
        raise OSError(str(exc) or "not yet") from exc


# ------------------------------------------------------------------ the replication metrics and their alerts


def _families(client: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in replication_families(client):
        out[family.name] = [(dict(s.labels), s.value) for s in family.samples]
    return out


async def test_replication_metrics_name_the_primary_its_replica_and_follow_a_failover(
    sentinels: SentinelSet,
) -> None:
    """The gateway_redis_* replication families as a scrape reads them with the broker's client
    (the gateway's and the worker's collectors call the same function), before and after a
    failover, refused INFO (an ACL without +info), and promtool's lint on the exposition."""
    broker = make_broker(sentinels.url, namespace="metrics-test")
    old = sentinels.primary
    try:
        broker.client.set("x", "1")
        before = _families(broker.client)
        assert before["gateway_redis_replication_readable"] == [({}, 1.0)]
        assert before["gateway_redis_primary_info"] == [({"address": f"127.0.0.1:{old.port}", "role": "master"}, 1.0)]
        assert before["gateway_redis_connected_replicas"] == [({}, 1.0)]
        [(labels, lag)] = before["gateway_redis_replication_lag_bytes"]
        assert labels == {"replica": f"127.0.0.1:{sentinels.replica.port}"} and lag >= 0
        assert len(before["gateway_redis_replication_ack_age_seconds"]) == 1

        old.kill()
        new_port = await asyncio.to_thread(sentinels.wait_for_new_primary, old.port, 15.0)
        await until_ok(lambda: asyncio.to_thread(broker.client.set, "x", "2"), 15.0)
        after = _families(broker.client)
        assert after["gateway_redis_primary_info"] == [({"address": f"127.0.0.1:{new_port}", "role": "master"}, 1.0)]
        assert after["gateway_redis_connected_replicas"] == [({}, 0.0)]  # the old primary is dead
        assert after["gateway_redis_replication_lag_bytes"] == []

        admin: Any = redis.Redis(port=new_port)
        admin.execute_command("ACL", "SETUSER", "noinfo", "on", ">pw", "~*", "+@all", "-info")
        admin.close()
        refused = redis.Redis(port=new_port, username="noinfo", password="pw", socket_timeout=1.0)
        assert _families(refused) == {"gateway_redis_replication_readable": [({}, 0.0)]}
        refused.close()

        if shutil.which("promtool"):
            from prometheus_client import CollectorRegistry, generate_latest

            class Replication:
                def collect(self) -> Any:
                    return replication_families(broker.client)

            registry = CollectorRegistry(auto_describe=False)
            registry.register(Replication())
            exposition = generate_latest(registry).decode()
            assert 'gateway_redis_primary_info{address="127.0.0.1:' in exposition
            done = await asyncio.to_thread(
                subprocess.run,
                ["promtool", "check", "metrics"],
                input=exposition,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
    finally:
        broker.client.close()


RULE_TESTS = """
rule_files: [{alerts}]
evaluation_interval: 1m
tests:
  # Two hosts: the primary moves at minute 5, the new one has no replica until minute 20.
  - interval: 1m
    input_series:
      - series: 'gateway_redis_primary_info{{job="gateway",instance="a",address="10.10.0.20:6379",role="master"}}'
        values: '1x4 _x30'
      - series: 'gateway_redis_primary_info{{job="gateway",instance="a",address="10.10.0.30:6379",role="master"}}'
        values: '_x4 1x30'
      - series: 'gateway_redis_connected_replicas{{job="gateway",instance="a"}}'
        values: '1x4 0x15 1x15'
      - series: 'gateway_redis_replication_lag_bytes{{job="gateway",instance="a",replica="10.10.0.30:6379"}}'
        values: '0x2 5000000x10'
      - series: 'gateway_redis_replication_ack_age_seconds{{job="gateway",instance="a",replica="10.10.0.30:6379"}}'
        values: '0x12'
    alert_rule_test:
      - {{alertname: RedisFailover, eval_time: 3m, exp_alerts: []}}
      - eval_time: 6m
        alertname: RedisFailover
        exp_alerts:
          - exp_labels: {{severity: warning}}
      - {{alertname: RedisFailover, eval_time: 25m, exp_alerts: []}}
      - {{alertname: RedisReplicaLost, eval_time: 5m, exp_alerts: []}}
      - eval_time: 8m
        alertname: RedisReplicaLost
        exp_alerts:
          - exp_labels: {{severity: critical}}
      - {{alertname: RedisReplicaLost, eval_time: 22m, exp_alerts: []}}
      - {{alertname: RedisReplicationLag, eval_time: 3m, exp_alerts: []}}
      - eval_time: 5m
        alertname: RedisReplicationLag
        exp_alerts:
          - exp_labels: {{severity: warning}}
  # One Redis, never a replica: the lost-replica rule stays quiet.
  - interval: 1m
    input_series:
      - series: 'gateway_redis_connected_replicas{{job="gateway",instance="a"}}'
        values: '0x30'
      - series: 'gateway_redis_up{{job="gateway",instance="a"}}'
        values: '1x30'
      - series: 'gateway_redis_replication_readable{{job="gateway",instance="a"}}'
        values: '1x30'
    alert_rule_test:
      - {{alertname: RedisReplicaLost, eval_time: 20m, exp_alerts: []}}
      - {{alertname: RedisReplicationUnreadable, eval_time: 20m, exp_alerts: []}}
  # Redis answers but INFO is refused (an ACL without +info).
  - interval: 1m
    input_series:
      - series: 'gateway_redis_up{{job="gateway",instance="a"}}'
        values: '1x30'
      - series: 'gateway_redis_replication_readable{{job="gateway",instance="a"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 15m
        alertname: RedisReplicationUnreadable
        exp_alerts:
          - exp_labels: {{severity: warning}}
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (ops/bootstrap.sh installs prometheus)")
def test_replication_alerts_fire_on_a_failover_a_lost_replica_and_lag(tmp_path: Path) -> None:
    """`promtool test rules` on ops/prometheus/alerts.yml's replication group, with series shaped
    like the scrapes above."""
    alerts = ROOT / "ops" / "prometheus" / "alerts.yml"
    annotations = {
        rule["alert"]: rule["annotations"]
        for group in yaml.safe_load(alerts.read_text())["groups"]
        for rule in group["rules"]
    }
    doc = yaml.safe_load(RULE_TESTS.format(alerts=alerts))
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            for expected in check["exp_alerts"]:  # promtool compares them too (static texts here)
                expected["exp_annotations"] = annotations[check["alertname"]]
    tests = tmp_path / "replication_test.yml"
    tests.write_text(yaml.safe_dump(doc, allow_unicode=True))
    done = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ gateway run + worker


async def _health(session: ClientSession, base: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{base}/health") as resp:
            data: dict[str, Any] = await resp.json()
            return data
    except Exception:
        return None


@dataclass
class Switch:
    """One change of primary under load, as measured."""

    name: str
    new_primary_s: float  # the sentinels name a new primary that reports role master
    intake_s: float  # the first 2xx after the last refused webhook of the switch (0: none refused)
    health_s: float  # every gateway's and the worker's /health names the new primary
    refused: int  # webhooks answered non-2xx during the switch (each retried by the load)
    new_port: int

    def line(self) -> str:
        return (
            f"{self.name}: new primary {self.new_primary_s:.2f} s, intake 2xx again {self.intake_s:.2f} s, "
            f"/health everywhere {self.health_s:.2f} s, {self.refused} refused"
        )


@pytest.mark.fault
async def test_gateways_and_workers_follow_failovers_under_load(tmp_path: Path, sentinels: SentinelSet) -> None:
    """Two `gateway run` on one recorded PBX stream and two `gateway worker`, given
    REDIS_URL=redis+sentinel://...; signed webhooks and recorded calls running. The primary is
    SIGKILLed; it comes back and the sentinels make it a replica of the new primary; that one is
    SIGKILLed in turn; it comes back too, and a planned switch-over (`SENTINEL FAILOVER`, the
    runbook's procedure) moves the primary once more. Nothing acknowledged is lost, no call is
    lettered twice, no SMS sent twice, and every refusal is a 503 the provider retries."""
    async with harness(tmp_path) as h:
        own_redis = h.redis_proc  # the harness's plain Redis: unused here, cleaned up below
        h.env["REDIS_URL"] = sentinels.url
        h.redis_proc = sentinels.primary  # what the harness's own checks read (h.client())
        try:
            await _run_failovers(h, sentinels)
        finally:
            h.redis_proc = own_redis


def _ok(post: Post) -> bool:
    return isinstance(post.result, int) and 200 <= post.result < 300


async def _switch(
    h: Harness, sentinels: SentinelSet, load: WebhookLoad, bases: list[str], name: str, *, planned: bool
) -> Switch:
    old_port = sentinels.primary_port()
    assert old_port is not None
    started_wall, started = time.time(), time.monotonic()
    if planned:
        new_port = await asyncio.to_thread(sentinels.planned_failover)
    else:
        sentinels.nodes[old_port].kill()
        new_port = await asyncio.to_thread(sentinels.wait_for_new_primary, old_port, 15.0)
    new_primary_s = time.monotonic() - started
    h.redis_proc = sentinels.nodes[new_port]
    expected = f"127.0.0.1:{new_port}"
    async with ClientSession() as session:
        pending = set(bases)
        while pending:
            for base in list(pending):
                health = await _health(session, base)
                if health and health["redis"].get("replication", {}).get("primary") == expected:
                    pending.discard(base)
            assert time.monotonic() - started < 30, f"/health of {pending} never named {expected}"
            await asyncio.sleep(0.1)
        health_s = time.monotonic() - started
    # Load on the new primary; then the refusals of this switch are all in.
    await asyncio.sleep(3.0)
    window = [p for p in load.posts if p.at > started_wall]
    refusals = [p.at for p in window if not _ok(p)]
    if refusals:
        back = [p.at for p in window if _ok(p) and p.at > max(refusals)]
        assert back, f"{name}: intake never answered 2xx again"
        intake_s = min(back) - started_wall
    else:
        intake_s = 0.0
    assert sum(1 for p in window if _ok(p)) > 10, f"{name}: almost nothing accepted after the switch"
    return Switch(name, new_primary_s, intake_s, health_s, len(refusals), new_port)


async def _run_failovers(h: Harness, sentinels: SentinelSet) -> None:
    gws = [await h.add_gateway(), await h.add_gateway()]
    await h.opt_out(INVALID_CITIZEN)  # the CLI through the sentinels too
    # Worker 1 with its /health listener (the harness's configuration, plus http_port).
    worker_port = free_port()
    worker_config = h.tmp / "worker.yaml"
    worker_config.write_text(
        gws[0].config.read_text().replace("worker: {threads: 2,", f"worker: {{http_port: {worker_port}, threads: 2,")
    )
    worker = await h.add_worker(start=False)
    worker.argv = ["worker", "--config", str(worker_config)]
    await worker.start()
    await h.add_worker()
    for gw in gws:
        await gw.wait_ready()
    worker_base = f"http://127.0.0.1:{worker_port}"
    old = sentinels.primary
    async with ClientSession() as session:
        health = await _health(session, gws[0].base_url)
        assert health is not None
        replication = health["redis"]["replication"]
        assert replication["primary"] == f"127.0.0.1:{old.port}", replication
        assert replication["connected_replicas"] == 1 and replication["replicas"][0]["state"] == "online"
        started = time.monotonic()
        while (worker_health := await _health(session, worker_base)) is None:
            assert time.monotonic() - started < 20, f"worker /health never answered:\n{worker.log_text()[-2000:]}"
            await asyncio.sleep(0.1)
        assert worker_health["redis"]["replication"]["primary"] == f"127.0.0.1:{old.port}", worker_health

    bases = [gw.base_url for gw in gws] + [worker_base]
    load = WebhookLoad([gw.base_url for gw in gws], rate_per_s=20.0)
    stop = asyncio.Event()
    task = asyncio.ensure_future(load.run(stop))
    switches: list[Switch] = []
    rejoined: list[float] = []
    try:
        await asyncio.sleep(3.0)
        first = await _switch(h, sentinels, load, bases, "kill 1", planned=False)
        switches.append(first)
        # The old primary comes back (empty-handed or stale): the sentinels make it a replica.
        back = time.monotonic()
        await asyncio.to_thread(sentinels.restart, old.port)
        rejoined.append(time.monotonic() - back)
        second = await _switch(h, sentinels, load, bases, "kill 2", planned=False)
        switches.append(second)
        assert second.new_port == old.port  # the only replica: the first primary, back in charge
        back = time.monotonic()
        await asyncio.to_thread(sentinels.restart, first.new_port)
        rejoined.append(time.monotonic() - back)
        dialed_before = time.monotonic()
        switches.append(await _switch(h, sentinels, load, bases, "planned", planned=True))
        # A call dialed after the last switch lettered (the wire's claim and settlement).
        while True:
            keys = {str((r.body or {}).get("callKey")) for r in h.carrier.requests}
            if [c for c, at in h.dials.items() if at > dialed_before and c in keys]:
                break
            assert time.monotonic() - dialed_before < 40, "no call lettered after the last switch"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
    settled = await h.settle(timeout=30)  # the workers' brokers on the last primary drained the queues
    statuses = load.statuses()
    client = h.client()
    try:
        counts = inbox_counts(client)
    finally:
        client.close()
    lost = [m for m in load.accepted if counts[m] == 0]
    twice = {m: c for m, c in counts.items() if c > 1}
    ledger = Ledger()
    check_lettering(h, ledger)  # no call lettered twice at the fake carrier
    check_messages(h, ledger)  # no Alimtalk twice, every queued post-call content accounted for
    print(
        "\nsentinel failovers under load (2 gateways, 2 workers): "
        + "; ".join(s.line() for s in switches)
        + f"; old primaries back as healthy replicas after {', '.join(f'{r:.1f} s' for r in rejoined)}; "
        f"posts {dict(statuses)}; accepted {len(load.accepted)}, lost {len(lost)}, stored twice {len(twice)}; "
        f"{ledger.summary()}"
    )
    for s in switches:
        assert s.new_primary_s <= NEW_PRIMARY_S, s.line()
        assert s.intake_s <= INTAKE_BACK_S, s.line()
    assert not lost, f"{len(lost)} acknowledged messages missing after the failovers: {lost[:10]}"
    assert not twice, f"messages stored more than once: {list(twice.items())[:5]}"
    assert not ledger.sms_twice, f"SMS sent twice: {ledger.sms_twice}"
    assert not load.rejected, load.rejected[:5]
    refused = {r for r in statuses if not (isinstance(r, int) and 200 <= r < 300)}
    assert refused <= {503}, f"refusals other than 503: {statuses}"
    assert settled, "the workers did not drain the queues on the last primary"
    assert all(gw.running for gw in gws) and all(w.running for w in h.workers)
