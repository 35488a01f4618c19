"""How many connections one listener holds open at once (HTTP and SMTP alike).

Every accepted connection costs a file descriptor and memory; a client (or a crowd of them)
that opens connections and sits on them must not starve the provider's retries and the staff.
Over the limit a new connection is answered at once with a refusal and closed.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)

REFUSAL_WARNING_EVERY_S = 60.0  # a flood of refused connections logs one WARNING a minute, not one each


class ConnectionGate:
    """The open connections of one listener, against `max_connections`."""

    def __init__(self, limit: int, name: str, setting: str = "http.max_connections") -> None:
        self.limit, self.name, self.setting = limit, name, setting
        self.open = 0
        self.refused = 0  # since start, for the log
        self._unreported = 0
        self._warned_at = -math.inf

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._warned_at >= REFUSAL_WARNING_EVERY_S:
                log.warning(
                    "%s: %d connections open (%s): refused %d new connection(s) since the last warning",
                    self.name,
                    self.open,
                    self.setting,
                    self._unreported,
                )
                self._warned_at, self._unreported = now, 0
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
