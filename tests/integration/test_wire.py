"""The lean multiplexed Redis connection (`gateway.infra.wire`) against a real redis-server: replies
reach their own callers under concurrency, errors stay with their command, and a dead, hung
or restarted Redis fails the pending commands cleanly and is reconnected to."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.infra.wire import Wire, wire_like
from gateway.outbox.store import connect
from gateway.sim.redisproc import RedisProcess, free_port


async def test_commands_scripts_and_batches(redis_url: str) -> None:
    wire = Wire.from_url(redis_url)
    try:
        assert await wire.execute("SET", "k", "값") == b"OK"
        assert (await wire.execute("GET", "k")).decode() == "값"
        assert await wire.execute("GET", "missing") is None
        assert await wire.execute_many([("INCR", "n"), ("INCRBY", "n", 41), ("HSET", "h", "a", 1, "b", 2.5)]) == [
            1,
            42,
            2,
        ]
        assert await wire.execute("HGETALL", "h") == [b"a", b"1", b"b", b"2.5"]
        script = wire.register_script("return {KEYS[1], ARGV[1], #ARGV}")
        assert await script(keys=["x"], args=["y", "z"]) == [b"x", b"y", 2]
        await wire.execute("SCRIPT", "FLUSH")  # as after a Redis restart: EVALSHA answers NOSCRIPT
        assert await script(keys=["x"], args=["y"]) == [b"x", b"y", 1]
        assert await wire.execute_many([]) == []
    finally:
        await wire.aclose()


async def test_each_reply_reaches_its_own_caller(redis_url: str) -> None:
    wire = Wire.from_url(redis_url)
    try:
        values = [f"v{i}-{'가' * (i % 7)}" for i in range(2000)]
        got = await asyncio.gather(*(wire.execute("ECHO", v) for v in values))
        assert [g.decode() for g in got] == values
        assert wire.connects == 1  # one connection, commands pipelined on it
    finally:
        await wire.aclose()


async def test_an_error_reply_fails_only_its_command(redis_url: str) -> None:
    wire = Wire.from_url(redis_url)
    try:
        await wire.execute("SET", "s", "text")
        results: tuple[Any, ...] = await asyncio.gather(
            wire.execute("ECHO", "a"), wire.execute("INCR", "s"), wire.execute("ECHO", "b"), return_exceptions=True
        )
        first, bad, last = results
        assert first == b"a" and last == b"b"
        assert isinstance(bad, ResponseError) and isinstance(bad, RedisError)
        with pytest.raises(ResponseError):  # a batch raises its first error once all replies are in
            await wire.execute_many([("SET", "t", 1), ("INCR", "s"), ("SET", "u", 2)])
        assert await wire.execute_many([("GET", "t"), ("GET", "u")]) == [b"1", b"2"]
    finally:
        await wire.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis_url: str) -> None:
    wire = Wire.from_url(redis_url, timeout_s=2.0)
    try:
        slow = asyncio.ensure_future(wire.execute("BLPOP", "nothing", 0.3))  # sent, answered in 0.3 s
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await wire.execute("ECHO", "mine") == b"mine"  # queued behind the cancelled one
        with pytest.raises(asyncio.CancelledError):
            await slow
    finally:
        await wire.aclose()


async def test_a_multi_exec_batch_is_not_interleaved(redis_url: str) -> None:
    """Commands of one `execute_many` go out back to back: another caller's command cannot
    land inside the transaction."""
    wire = Wire.from_url(redis_url)
    try:
        batch = wire.execute_many([("MULTI",), ("SET", "a", "1"), ("SET", "b", "2"), ("EXEC",)])
        others = [wire.execute("SET", "a", "other") for _ in range(50)]
        results = await asyncio.gather(batch, *others)
        assert results[0] == [b"OK", b"QUEUED", b"QUEUED", [b"OK", b"OK"]]
    finally:
        await wire.aclose()


async def test_a_killed_redis_fails_pending_commands_and_is_reconnected_to(tmp_path: Path) -> None:
    proc = RedisProcess(data_dir=tmp_path).start()
    wire = Wire.from_url(proc.url, timeout_s=2.0)
    try:
        assert await wire.execute("PING") == b"PONG"
        pending = asyncio.ensure_future(wire.execute("BLPOP", "never", 10))  # held by the server
        await asyncio.sleep(0.1)
        proc.kill()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await wire.execute("PING")  # nothing listens: a clear error, not a hang
        proc.start()  # the same port again, as a supervisor restarts it
        assert await wire.execute("PING") == b"PONG"
        assert wire.events == {"connects": 2, "connect_failures": 1, "timeouts": 0, "lost": 1, "readonly": 0}
    finally:
        await wire.aclose()
        proc.cleanup()


async def test_a_hung_redis_times_out_and_later_replies_go_to_the_right_caller(tmp_path: Path) -> None:
    proc = RedisProcess(data_dir=tmp_path).start()
    assert proc.proc is not None
    wire = Wire.from_url(proc.url, timeout_s=0.3)
    try:
        await wire.execute("SET", "k", "v")
        os.kill(proc.proc.pid, signal.SIGSTOP)  # a hung Redis: connected, silent
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            results = await asyncio.gather(wire.execute("GET", "k"), wire.execute("ECHO", "x"), return_exceptions=True)
            assert all(isinstance(r, RedisTimeoutError) for r in results), results
            assert loop.time() - began < 2.0
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        # The timed-out connection was dropped: its late replies cannot reach new callers.
        assert await wire.execute("ECHO", "fresh") == b"fresh"
        assert await wire.execute("GET", "k") == b"v"
        assert wire.events == {"connects": 2, "connect_failures": 0, "timeouts": 1, "lost": 0, "readonly": 0}
    finally:
        await wire.aclose()
        proc.cleanup()


async def test_a_demoted_redis_is_left_for_the_new_master(tmp_path: Path) -> None:
    """A Sentinel failover behind a proxy or a moved IP: the Redis this connection talks to
    becomes a replica and answers READONLY. The connection is dropped, so the next command
    goes to whatever the address leads to now (here: the same server, promoted back)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "n").mkdir()
    master = RedisProcess(data_dir=tmp_path / "m").start()
    node = RedisProcess(data_dir=tmp_path / "n").start()
    wire = Wire.from_url(node.url, timeout_s=2.0)
    admin = redis.Redis(port=node.port)
    try:
        assert await wire.execute("SET", "k", "1") == b"OK"
        admin.replicaof("127.0.0.1", master.port)
        with pytest.raises(ResponseError, match="READONLY"):
            await wire.execute("SET", "k", "2")
        assert wire.events["readonly"] == 1
        admin.replicaof("NO", "ONE")
        assert await wire.execute("SET", "k", "3") == b"OK"
        assert wire.connects == 2
    finally:
        admin.close()
        await wire.aclose()
        master.cleanup()
        node.cleanup()


async def test_password_and_database_from_the_url(tmp_path: Path) -> None:
    proc = RedisProcess(data_dir=tmp_path).start()
    try:
        admin = redis.Redis(port=proc.port)
        admin.config_set("requirepass", "s3cret")
        admin.close()
        wire = Wire.from_url(f"redis://:s3cret@127.0.0.1:{proc.port}/3")
        other = Wire.from_url(f"redis://:s3cret@127.0.0.1:{proc.port}/0")
        wrong = Wire.from_url(f"redis://:nope@127.0.0.1:{proc.port}/0")
        try:
            await wire.execute("SET", "where", "db3")
            assert await other.execute("GET", "where") is None
            assert await wire.execute("GET", "where") == b"db3"
            with pytest.raises(RedisConnectionError, match="cannot connect"):
                await wrong.execute("PING")
        finally:
            for w in (wire, other, wrong):
                await w.aclose()
    finally:
        proc.cleanup()


async def test_a_wire_like_a_redis_py_client(redis_url: str) -> None:
    client = connect(redis_url, timeout_s=0.7)
    wire = wire_like(client)
    try:
        assert wire.timeout_s == 0.7 and wire.port == int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
        await client.set("shared", "yes")
        assert await wire.execute("GET", "shared") == b"yes"
    finally:
        await wire.aclose()
        await client.aclose()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test redis")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_with_the_url_options_redis_py_takes(tmp_path: Path) -> None:
    """`rediss://` against a redis-server speaking TLS only: the certificate is checked against
    `ssl_ca_certs` (and the host name), refused without it, not checked with `ssl_cert_reqs=none`."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"rediss://127.0.0.1:{port}/0"
    urls = {"trusted": f"{base}?ssl_ca_certs={cert}", "unknown_ca": base, "unchecked": f"{base}?ssl_cert_reqs=none"}
    wires = {name: Wire.from_url(url, timeout_s=2.0) for name, url in urls.items()}
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            await asyncio.sleep(0.05)
        assert await wires["trusted"].execute("PING") == b"PONG"
        assert await wires["unchecked"].execute("PING") == b"PONG"
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await wires["unknown_ca"].execute("PING")  # a self-signed certificate the system does not trust
        tls = Wire.from_url(f"{base}?ssl_check_hostname=false").tls
        assert tls is not None and tls.check_hostname is False and tls.verify_mode is ssl.CERT_REQUIRED
        assert Wire.from_url("redis://127.0.0.1:6379/0").tls is None
    finally:
        for wire in wires.values():
            await wire.aclose()
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


# ------------------------------------------------------------------ the connect path (issue #13)


class _ScriptedRedis:
    """A TCP server on 127.0.0.1 that speaks just enough RESP to misbehave on purpose during a
    connect's AUTH/SELECT: `mode` is "ok" (answers, after `delay_s`), "silent" (reads, never
    answers), "garbage" (not RESP), "error" (an error reply), "close" (closes the connection) or
    "reset" (aborts it). Every connection reads the mode when a command arrives."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 0.0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hiredis

        self.connections += 1
        parser = hiredis.Reader()
        try:
            while data := await reader.read(4096):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    mode = self.mode
                    if mode == "silent":
                        continue
                    if mode == "close":
                        writer.close()
                        return
                    if mode == "reset":
                        writer.transport.abort()
                        return
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    name = bytes(command[0]).upper()
                    writer.write(
                        {
                            "garbage": b"?this is not RESP\r\n",
                            "error": b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
                        }.get(mode, b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")
                    )
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> Any:
    server = _ScriptedRedis()
    port = await server.start()
    yield server, port
    await server.stop()


async def _all_fail(wire: Wire, callers: int = 20) -> list[BaseException]:
    """`callers` commands at once; each must fail with a RedisError, none may hang."""
    results = await asyncio.wait_for(
        asyncio.gather(*(wire.execute("PING") for _ in range(callers)), return_exceptions=True), 10
    )
    assert all(isinstance(r, RedisError) for r in results), results
    return [r for r in results if isinstance(r, BaseException)]


@pytest.mark.parametrize("mode", ["silent", "garbage", "error", "close", "reset"])
@pytest.mark.parametrize("hello", ["auth", "auth_user", "select"])
async def test_every_connect_failure_releases_its_waiters_and_is_retried(
    scripted: tuple[_ScriptedRedis, int], mode: str, hello: str
) -> None:
    """Whatever goes wrong during a connect's AUTH/SELECT (no answer: redis-py's TimeoutError;
    garbage; an error reply; the connection closed or reset), every caller waiting for that
    connect fails with a RedisError, the next command connects again, and once the server
    answers properly the commands succeed: nothing stays stuck on a connect that failed."""
    server, port = scripted
    server.mode = mode
    wire = Wire(
        port=port,
        password="pw" if hello.startswith("auth") else None,
        username="gw" if hello == "auth_user" else None,
        db=2 if hello == "select" else 0,
        timeout_s=0.2,
        connect_timeout_s=1.0,
    )
    try:
        for _ in range(3):  # each round is a new connect, failing again
            errors = await _all_fail(wire)
            assert all(isinstance(e, RedisConnectionError) and "cannot connect" in str(e) for e in errors), errors
        assert wire.events["connect_failures"] == 3 and wire.connects == 0
        server.mode = "ok"
        assert await asyncio.wait_for(wire.execute("PING"), 5) == b"PONG"
        assert await asyncio.wait_for(asyncio.gather(*(wire.execute("PING") for _ in range(5))), 5) == [b"PONG"] * 5
        assert wire.connects == 1
    finally:
        await wire.aclose()


async def test_a_connect_slower_than_its_bound_is_a_connect_failure(scripted: tuple[_ScriptedRedis, int]) -> None:
    """The whole connect is bounded by `connect_timeout_s` (the builtin TimeoutError of
    `asyncio.wait_for`), here shorter than the command timeout."""
    server, port = scripted
    server.mode = "silent"
    wire = Wire(port=port, password="pw", timeout_s=5.0, connect_timeout_s=0.2)
    try:
        await _all_fail(wire)
        await _all_fail(wire)
        server.mode = "ok"
        assert await asyncio.wait_for(wire.execute("PING"), 5) == b"PONG"
    finally:
        await wire.aclose()


async def test_a_cancelled_caller_does_not_cancel_the_shared_connect(scripted: tuple[_ScriptedRedis, int]) -> None:
    """The caller that started a connect is cancelled (its HTTP client went away, a
    `wait_for` around it expired) while others wait for the same connect: they still get
    the connection, and the connect is not started again."""
    server, port = scripted
    server.delay_s = 0.3  # AUTH answered late, within the timeouts
    wire = Wire(port=port, password="pw", timeout_s=2.0, connect_timeout_s=2.0)
    try:
        first = asyncio.ensure_future(wire.execute("PING"))
        await asyncio.sleep(0.05)
        others = [asyncio.ensure_future(wire.execute("ECHO", "x")) for _ in range(5)]
        await asyncio.sleep(0.05)
        first.cancel()
        late = asyncio.ensure_future(wire.execute("PING"))  # joins the connect still running
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(asyncio.gather(*others, late), 5) == [b"OK"] * 5 + [b"PONG"]
        assert wire.connects == 1 and server.connections == 1
    finally:
        await wire.aclose()


async def test_a_bounded_wait_for_a_connect_leaves_it_for_the_next_caller(scripted: tuple[_ScriptedRedis, int]) -> None:
    """`asyncio.wait_for(wire.execute(...), short)`, as /health does, gives up on a slow
    connect without breaking it: the next command uses the connection it made."""
    server, port = scripted
    server.delay_s = 0.3
    wire = Wire(port=port, password="pw", timeout_s=2.0, connect_timeout_s=2.0)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wire.execute("PING"), 0.05)
        assert await asyncio.wait_for(wire.execute("PING"), 5) == b"PONG"
        assert wire.connects == 1 and server.connections == 1
    finally:
        await wire.aclose()


async def test_closing_the_wire_during_a_connect_fails_its_waiters(scripted: tuple[_ScriptedRedis, int]) -> None:
    """`aclose` while a connect is under way: its waiters get a RedisError (not a hang, not a
    cancellation they did not ask for), and no connection is left open behind."""
    server, port = scripted
    server.mode = "silent"
    wire = Wire(port=port, password="pw", timeout_s=60.0, connect_timeout_s=60.0)
    waiters = [asyncio.ensure_future(wire.execute("PING")) for _ in range(3)]
    await asyncio.sleep(0.1)
    await wire.aclose()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)  # well before 60 s
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    assert wire._conn is None


@pytest.mark.parametrize(
    ("password", "db"),
    [("s3cret", 0), (None, 0), (None, 1), ("s3cret", 2)],
    ids=["password", "no_password", "select_only", "password_and_select"],
)
async def test_a_paused_redis_fails_fast_and_is_used_again_once_it_resumes(
    tmp_path: Path, password: str | None, db: int
) -> None:
    """SIGSTOP (a paused VM, a fork-heavy save, a debugger): with a password (or a database
    other than 0) the reconnect's AUTH (SELECT) times out, as redis-py's TimeoutError, which
    once escaped and left every later command waiting for ever. Commands fail within their
    timeouts while paused, again and again, and succeed once Redis resumes, on the same Wire."""
    proc = RedisProcess(data_dir=tmp_path).start()
    assert proc.proc is not None
    if password:
        admin = redis.Redis(port=proc.port)
        admin.config_set("requirepass", password)
        admin.close()
    auth = f":{password}@" if password else ""
    wire = Wire.from_url(f"redis://{auth}127.0.0.1:{proc.port}/{db}", timeout_s=0.2)
    try:
        assert await wire.execute("SET", "k", "v") == b"OK"
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(4):  # the first round times out on the connection; later ones reconnect
                await _all_fail(wire, callers=10)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        assert await asyncio.wait_for(wire.execute("GET", "k"), 5) == b"v"
        assert await asyncio.wait_for(asyncio.gather(*(wire.execute("GET", "k") for _ in range(10))), 5) == [b"v"] * 10
    finally:
        await wire.aclose()
        proc.cleanup()
