"""One root for every error the gateway raises on purpose.

Edges (HTTP, SMTP, CLI) map these to status codes and exit codes; nothing inside the
gateway knows about those codes.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of all deliberate gateway errors."""


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
    """Redis could not be reached within the configured deadline."""


class CarrierError(GatewayError):
    """A carrier adapter could not be built or configured."""


class RecipientUnknown(GatewayError):
    """A citizen's message to a number that is not one of the city's (HTTP 400, SMTP 550 5.1.1)."""


class ThreadNotFound(GatewayError):
    """The staff API named a thread that does not exist (HTTP 404)."""


class ClaimedByOther(GatewayError):
    """A thread another staff member has claimed (HTTP 409); ``holder`` is who."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"다른 담당자({holder})가 처리 중인 민원입니다 / claimed by {holder}")
