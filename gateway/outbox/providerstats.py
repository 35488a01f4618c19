"""What each provider answered: totals for /metrics, a recent window for /health.

The totals (`sends[(channel, provider, result)]`) only ever grow, as Prometheus counters must.
The window holds the last `window` answers per provider, so /health's `error_rate` says how the
provider is doing now, not since the process started. Thread-safe: the worker's actors run on
dramatiq's threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from gateway.infra.rediskeys import providers_key

# Answers that mean the provider (not the citizen) is in trouble.
ERROR_RESULTS = frozenset({"temporary_error", "rejected"})


class ProviderStats:
    def __init__(self, window: int = 100) -> None:
        self.window = window
        self.sends: dict[tuple[str, str, str], int] = {}
        self._recent: dict[str, deque[bool]] = {}
        self._last: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def record(self, channel: str, provider: str, result: str) -> None:
        key = (channel, provider, result)
        with self._lock:
            self.sends[key] = self.sends.get(key, 0) + 1
            recent = self._recent.get(provider)
            if recent is None:
                recent = self._recent[provider] = deque(maxlen=self.window)
            recent.append(result in ERROR_RESULTS)
            self._last[provider] = (result, time.time())

    def totals(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.sends)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per provider: answers in the window, errors among them, error rate, last answer."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for provider, recent in self._recent.items():
                errors = sum(recent)
                result, at = self._last[provider]
                out[provider] = {
                    "recent": len(recent),
                    "recent_errors": errors,
                    "error_rate": round(errors / len(recent), 3) if recent else 0.0,
                    "last_result": result,
                    "last_at": round(at, 3),
                }
            return out


# -- sharing the workers' view with the gateways' /health --------------------------------------
# Alimtalk and SMS are sent by `gateway worker` processes, so their circuit breakers live there.
# Each worker writes its view to one Redis hash every few seconds (field "<provider>@<worker>");
# every gateway's /health reads and merges it, so an operator sees all providers in one place.


def publish(client: Any, namespace: str, worker_id: str, report: dict[str, dict[str, Any]], ttl_s: int = 600) -> None:
    """Write this worker's provider view (sync redis client; raises redis errors)."""
    if not report:
        return
    import json

    key = providers_key(namespace)
    pipe = client.pipeline(transaction=False)
    for provider, state in report.items():
        pipe.hset(key, f"{provider}@{worker_id}", json.dumps({**state, "at": round(time.time(), 3)}))
    pipe.expire(key, ttl_s)
    pipe.execute()


CIRCUIT_ORDER = {"closed": 0, "half_open": 1, "open": 2}


def read_published(client: Any, namespace: str, max_age_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """Merge the workers' views per provider: the worst circuit, errors over answers of all workers.

    A view older than `max_age_s` (its worker stopped) is left out; `workers` counts the rest."""
    import json

    now = time.time()
    merged: dict[str, dict[str, Any]] = {}
    for field, raw in client.hgetall(providers_key(namespace)).items():
        name = (field.decode() if isinstance(field, bytes) else str(field)).rsplit("@", 1)[0]
        try:
            state = json.loads(raw)
        except ValueError:
            continue
        if now - float(state.get("at", 0)) > max_age_s:
            continue
        into = merged.setdefault(name, {"circuit": "closed", "recent": 0, "recent_errors": 0, "workers": 0})
        into["workers"] += 1
        into["recent"] += int(state.get("recent", 0))
        into["recent_errors"] += int(state.get("recent_errors", 0))
        circuit = str(state.get("circuit", "closed"))
        if CIRCUIT_ORDER.get(circuit, 0) > CIRCUIT_ORDER.get(into["circuit"], 0):
            into["circuit"] = circuit
    for state in merged.values():
        state["error_rate"] = round(state["recent_errors"] / state["recent"], 3) if state["recent"] else 0.0
    return merged
