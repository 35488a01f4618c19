"""The shortcuts taken on the hot paths (webhook intake, lettering) give exactly what the plain
computations give: job ids stay unique, number hashes stay keyed and correct, sealed values stay
readable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.infra.crypto import Sealer, _b64, hmac_sha256_hex
from gateway.messaging.jobs import _job_id, _JobIds
from gateway.outbox.store import number_hash

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_job_ids_are_unique_and_shaped_like_uuid4() -> None:
    ids = [_job_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(UUID_SHAPE.match(i) for i in ids[::997])


def test_two_sources_do_not_share_a_prefix() -> None:
    a, b = _JobIds(), _JobIds()
    assert a()[:24] != b()[:24]


def test_a_forked_child_draws_its_own_prefix() -> None:
    parent = _job_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, leave without running pytest's teardown
        os.write(write, _job_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert UUID_SHAPE.match(child)
    assert child[:24] != parent[:24]


def _plain_hash(key: bytes, e164: str) -> str:
    return hmac.new(key, e164.encode(), hashlib.sha256).hexdigest()[:32]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"k" * 32, b"j" * 32, b""]),
            st.sampled_from(["+821012345678", "+821087654321", "+82319002000", ""]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_number_hash_remembers_only_the_last_number(calls: list[tuple[bytes, str]]) -> None:
    # Repeats, alternations and key changes in any order: always the keyed hash of this call.
    for key, number in calls:
        assert number_hash(key, number) == _plain_hash(key, number)


@given(st.binary(max_size=64))
def test_b64_is_urlsafe_base64_without_padding(data: bytes) -> None:
    assert _b64(data) == base64.urlsafe_b64encode(data).decode().rstrip("=")


@given(st.text(max_size=200), st.binary(max_size=40))
def test_sealed_values_open(plaintext: str, aad: bytes) -> None:
    sealer = Sealer.from_env(Sealer.new_key_spec("k1"), "TEST_KEYS")
    assert sealer.open(sealer.seal(plaintext, aad), aad) == plaintext


@settings(max_examples=300)
@given(st.binary(max_size=130), st.binary(max_size=300))
def test_hmac_sha256_hex_is_hmac(key: bytes, message: bytes) -> None:
    # keys shorter, equal to and longer than SHA-256's 64-byte block; twice (kept states reused)
    for _ in range(2):
        assert hmac_sha256_hex(key, message) == hmac.new(key, message, hashlib.sha256).hexdigest()
