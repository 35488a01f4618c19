"""A Redis primary, its replica and three sentinels on loopback (tests of a failover).

Uses Debian's `redis-sentinel` when installed (`ops/bootstrap.sh`), else `redis-server
--sentinel` (the same program in sentinel mode, from the redis-server package). Each sentinel
gets its own writable config file: a sentinel rewrites it as it learns the topology.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from gateway.errors import StoreUnavailable
from gateway.sim.redisproc import RedisProcess, free_port


def sentinel_command(conf: Path) -> list[str]:
    """The command line of a sentinel reading `conf` (the file comes first: redis-server reads
    the options after it as more configuration)."""
    exe = shutil.which("redis-sentinel")
    if exe:
        return [exe, str(conf)]
    server = shutil.which("redis-server")
    if server is None:
        raise StoreUnavailable("redis-server is not installed: run ops/bootstrap.sh")
    return [server, str(conf), "--sentinel"]


class SentinelProcess:
    """One sentinel watching `master` at 127.0.0.1:`primary_port`."""

    def __init__(
        self,
        master: str,
        primary_port: int,
        *,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.port = free_port()
        self.master = master
        self.dir = Path(tempfile.mkdtemp(prefix="gw-sentinel-"))
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    "loglevel warning",
                    f"dir {self.dir}",
                    f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {master} {down_after_ms}",
                    f"sentinel failover-timeout {master} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {master} 1",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.proc = subprocess.Popen(sentinel_command(self.conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A primary, one replica and `sentinels` sentinels (quorum 2), all on 127.0.0.1."""

    def __init__(self, master: str = "gwprimary", *, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.master = master
        self.primary = RedisProcess()
        self.replica = RedisProcess(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.nodes = {self.primary.port: self.primary, self.replica.port: self.replica}
        self._retired: list[RedisProcess] = []  # nodes replaced by `restart`
        self.sentinels = [
            SentinelProcess(master, self.primary.port, down_after_ms=down_after_ms) for _ in range(sentinels)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master}/0"

    def start(self, timeout: float = 30.0) -> SentinelSet:
        """Start everything; on any failure stop what was started (no process outlives it)."""
        try:
            self.primary.start()
            self.replica.start()
            for s in self.sentinels:
                s.start()
            deadline = time.monotonic() + timeout
            # Ready for a failover once every sentinel knows the replica and the other sentinels
            # (a leader is elected by a majority of the sentinels that know each other).
            while time.monotonic() < deadline:
                if self._replica_synced() and all(self._sees_all(s) for s in self.sentinels):
                    return self
                if any(s.proc is not None and s.proc.poll() is not None for s in self.sentinels):
                    raise StoreUnavailable("a sentinel exited at start")
                time.sleep(0.1)
            raise StoreUnavailable("the sentinels did not learn the topology in time")
        except BaseException:
            self.cleanup()
            raise

    def _replica_synced(self) -> bool:
        try:
            info = redis.Redis(port=self.replica.port, socket_timeout=1.0).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def _sees_all(self, sentinel: SentinelProcess) -> bool:
        try:
            state: Any = sentinel.client().sentinel_master(self.master)
        except redis.RedisError:
            return False
        return (
            int(state.get("num-slaves", 0)) >= 1 and int(state.get("num-other-sentinels", 0)) >= len(self.sentinels) - 1
        )

    def primary_port(self) -> int | None:
        """The primary's port as the first answering sentinel names it (None if none answers)."""
        for s in self.sentinels:
            try:
                addr: Any = s.client().sentinel_get_master_addr_by_name(self.master)
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def current_primary(self) -> RedisProcess:
        port = self.primary_port()
        if port is None:
            raise StoreUnavailable("no sentinel answers")
        return self.nodes[port]

    def wait_for_new_primary(self, old_port: int, timeout: float = 15.0) -> int:
        """Block until a sentinel names a primary other than `old_port` and that node reports
        role master; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port:
                try:
                    if redis.Redis(port=port, socket_timeout=0.5).info("replication").get("role") == "master":
                        return port
                except redis.RedisError:
                    pass
            time.sleep(0.02)
        raise StoreUnavailable(f"no new primary within {timeout} s")

    def restart(self, port: int, timeout: float = 30.0) -> RedisProcess:
        """Start the node on `port` again after a crash, as it would come back on its host: with
        its own settings only (no `replicaof`), so that it starts as a primary with stale data and
        the sentinels must turn it into a replica of the current primary. Blocks until it is
        one, in sync, and every sentinel counts it as a healthy replica (a candidate for the next
        failover)."""
        old = self.nodes[port]
        node = RedisProcess(port=port, appendonly=old.appendonly, data_dir=old.data_dir, appendfsync=old.appendfsync)
        old.kill()
        self._retired.append(old)  # owns the data directory: removed at cleanup
        self.nodes[port] = node.start()
        self.wait_for_replica(port, timeout)
        return node

    def wait_for_replica(self, port: int, timeout: float = 30.0) -> None:
        """Block until the node on `port` replicates the primary the sentinels name (link up) and
        every sentinel lists it as a replica without a down or disconnected flag."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._is_synced_replica(port) and all(self._lists_healthy(s, port) for s in self.sentinels):
                return
            time.sleep(0.1)
        raise StoreUnavailable(f"127.0.0.1:{port} did not become a healthy replica within {timeout} s")

    def _is_synced_replica(self, port: int) -> bool:
        primary = self.primary_port()
        try:
            info = redis.Redis(port=port, socket_timeout=1.0).info("replication")
        except redis.RedisError:
            return False
        return (
            info.get("role") == "slave"
            and info.get("master_port") == primary
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
        )

    def _lists_healthy(self, sentinel: SentinelProcess, port: int) -> bool:
        try:
            replicas: Any = sentinel.client().sentinel_slaves(self.master)
        except redis.RedisError:
            return False
        return any(
            int(r.get("port", 0)) == port
            and not ({"s_down", "o_down", "disconnected"} & set(str(r.get("flags", "")).split(",")))
            and r.get("master-link-status") == "ok"
            for r in replicas
        )

    def planned_failover(self, pause_ms: int = 10_000, timeout: float = 15.0) -> int:
        """A maintenance switch-over that loses no acknowledged write (ops/runbook.md, "Redis
        maintenance"); the new primary's port.

        `SENTINEL FAILOVER` alone promotes the replica at once but leaves the old primary a
        primary until the sentinels reconfigure it (measured: 10 s), and every client still
        connected to it keeps writing there: acknowledged writes the resync then throws away
        (1,897 of 2,128 in that test). So, as the runbook does by hand: pause writes on the old
        primary, wait until every replica has its whole stream, `SENTINEL FAILOVER`, wait for
        the promotion, make the old primary a replica of the new one ourselves, and only then
        unpause (writes held meanwhile now meet a replica: READONLY, never a silent loss)."""
        old_port = self.primary_port()
        if old_port is None:
            raise StoreUnavailable("no sentinel answers")
        old: Any = redis.Redis(port=old_port, socket_timeout=2.0)
        try:
            old.execute_command("CLIENT", "PAUSE", str(pause_ms), "WRITE")
            try:
                deadline = time.monotonic() + timeout
                while True:
                    info: Any = old.info("replication")
                    offsets = [v["offset"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                    if offsets and all(o >= info["master_repl_offset"] for o in offsets):
                        break
                    if time.monotonic() > deadline:
                        raise StoreUnavailable("the replicas did not catch up")
                    time.sleep(0.01)
                self.sentinels[0].client().sentinel_failover(self.master)
                new_port = self.wait_for_new_primary(old_port, timeout)
                old.execute_command("REPLICAOF", "127.0.0.1", str(new_port))
            finally:
                old.execute_command("CLIENT", "UNPAUSE")
        finally:
            old.close()
        return new_port

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.stop()
        for node in [*self.nodes.values(), *self._retired]:
            node.cleanup()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
