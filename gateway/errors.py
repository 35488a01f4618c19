"""One root for every error the gateway raises on purpose.

Each class carries what the edges answer it with: ``http_status`` (the HTTP edges, through
`gateway.infra.http.error_response`, the one place an error becomes an HTTP answer) and
``smtp_reply`` (the SMTP edge, `gateway.inbox.smtp`). An edge chooses an answer by the error's
type, never by its text. The CLI maps these to exit codes.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Root of all deliberate gateway errors.

    ``http_status`` 500 means "not meant for a client": no HTTP edge answers it on purpose.
    """

    http_status: ClassVar[int] = 500
    # The SMTP edge's reply code and enhanced status for a mail refused with this error.
    smtp_reply: ClassVar[str] = "550 5.6.0"
    # Text of the HTTP answer when `str()` is not for the client (None: `str()` is).
    http_message: ClassVar[str | None] = None
    # The HTTP answer's JSON keeps non-ASCII text as is (True) or escapes it (False, JSON's default).
    http_readable_json: ClassVar[bool] = False

    def http_body(self) -> dict[str, str]:
        """The JSON object of the HTTP answer: ``{"error": ...}``, plus what a subclass adds."""
        return {"error": self.http_message if self.http_message is not None else str(self)}


class ConfigError(GatewayError):
    """gateway.yaml is missing, unreadable or invalid."""


class RulesError(GatewayError):
    """One or more problems in rules/*.yaml; `problems` holds one line per problem.

    Each problem reads ``file:line: key.path: message``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class AmiError(GatewayError):
    """An AMI connection or protocol problem."""


class AmiAuthError(AmiError):
    """The PBX rejected the configured AMI username/secret."""


class AmiTimeout(AmiError):
    """The PBX did not answer an action in time (a silent peer)."""


class StoreUnavailable(GatewayError):
    """Redis could not be reached within the configured deadline (HTTP 503: the sender retries).

    The HTTP answer says only "temporarily unavailable": `str()` names Redis internals.
    """

    http_status = 503
    http_message = "temporarily unavailable"


class CarrierError(GatewayError):
    """A carrier adapter could not be built or configured."""


class BadRequest(GatewayError):
    """Malformed HTTP input: a webhook or staff API body that cannot be read (HTTP 400)."""

    http_status = 400


class Unauthorized(GatewayError):
    """Missing, wrong or replayed webhook signature (HTTP 401)."""

    http_status = 401


class RecipientUnknown(GatewayError):
    """A citizen's message to a number that is not one of the city's (HTTP 400, SMTP 550 5.1.1)."""

    http_status = 400
    smtp_reply = "550 5.1.1"


class ThreadNotFound(GatewayError):
    """The staff API named a thread that does not exist (HTTP 404)."""

    http_status = 404


class ClaimedByOther(GatewayError):
    """A thread another staff member has claimed (HTTP 409); ``holder`` is who.

    The answer names the holder (``claimed_by``) and keeps the Korean text readable.
    """

    http_status = 409
    http_readable_json = True

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"다른 담당자({holder})가 처리 중인 민원입니다 / claimed by {holder}")

    def http_body(self) -> dict[str, str]:
        return {"error": str(self), "claimed_by": self.holder}


class ReportRejected(GatewayError, ValueError):
    """A provider's webhook (delivery report, 080 opt-out) that cannot be read (HTTP 400).

    Raised by the provider adapters' parsers; still a ValueError, as the parsers document.
    """

    http_status = 400


class ReportForged(ReportRejected):
    """A provider's webhook whose signature is missing or wrong: not to be trusted (HTTP 401)."""

    http_status = 401
