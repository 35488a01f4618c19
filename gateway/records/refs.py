"""How the flows name what they hand to the archive, where two of them must agree."""

from __future__ import annotations

from gateway.domain.inputs import message_key


def message_ref(provider: str, message_id: str) -> str:
    """A citizen's message in the archive (`messages.id`, `ThreadFact.message`): the provider
    and a digest of its message id, as the intake's idempotency key names it. The intake
    (RECEIVED) and the worker (AUTO_REPLIED) both build it from what they have."""
    return f"{provider}:{message_key(message_id)}"
