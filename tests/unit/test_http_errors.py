"""HTTP errors by type: each error class carries its status, and one function turns it into the
answer (`gateway.infra.http.error_response`). No edge reads an error's text to choose a status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters._http import verify_signature
from gateway.errors import (
    BadRequest,
    ClaimedByOther,
    ConfigError,
    GatewayError,
    RecipientUnknown,
    ReportForged,
    ReportRejected,
    StoreUnavailable,
    ThreadNotFound,
    Unauthorized,
)
from gateway.inbox.intake import InboundRejected, OptedOut
from gateway.infra.http import error_response
from gateway.messaging.reports import UnknownProvider, sandbox_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequest("x"), 400),
        (InboundRejected("x"), 400),
        (RecipientUnknown("x"), 400),
        (ReportRejected("x"), 400),
        (Unauthorized("x"), 401),
        (ReportForged("x"), 401),
        (ThreadNotFound("x"), 404),
        (UnknownProvider("x"), 404),
        (ClaimedByOther("kim"), 409),
        (OptedOut("x"), 409),
        (StoreUnavailable("redis: down"), 503),
        (ConfigError("x"), 500),
    ],
)
def test_each_error_class_carries_its_status(error: GatewayError, status: int) -> None:
    assert type(error).http_status == status
    assert error_response(error).status == status


def test_bodies_are_as_before() -> None:
    """The JSON bodies, byte for byte: Redis internals never reach the client, the claim conflict
    names the holder in readable Korean, other errors keep JSON's ASCII escapes."""
    assert error_response(StoreUnavailable("redis: Connection refused")).body == b'{"error": "temporarily unavailable"}'
    assert (
        error_response(StoreUnavailable("x"), message="temporarily unavailable, retry").body
        == b'{"error": "temporarily unavailable, retry"}'
    )
    conflict = error_response(ClaimedByOther("kim"))
    assert isinstance(conflict.body, bytes)
    assert json.loads(conflict.body) == {"error": str(ClaimedByOther("kim")), "claimed_by": "kim"}
    assert "다른 담당자".encode() in conflict.body
    assert error_response(OptedOut("수신거부")).body == b'{"error": "\\uc218\\uc2e0\\uac70\\ubd80"}'


def test_forged_and_unreadable_reports_are_two_classes() -> None:
    """A bad signature is ReportForged (401), an unreadable body ReportRejected (400), whatever
    the text says; both stay ValueErrors, as the parsers document."""
    with pytest.raises(ReportForged):
        verify_signature({}, "secret")
    with pytest.raises(ReportForged):
        sandbox_parser("secret")({"X-Sandbox-Signature": "wrong"}, b"{}")
    with pytest.raises(ReportRejected) as caught:  # the word "signature" in the input changes nothing
        sandbox_parser("secret")(
            {"X-Sandbox-Signature": "secret"}, b'{"reports": [{"reference": "r", "status": "signature", "at": 1}]}'
        )
    assert type(caught.value) is ReportRejected and isinstance(caught.value, ValueError)
    assert error_response(caught.value).status == 400


def test_no_edge_chooses_a_status_by_message_text() -> None:
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert "in str(exc)" not in text and '"signature" in' not in text, path
