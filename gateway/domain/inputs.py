"""What inbound text may look like before it is stored: pure checks shared by every edge.

A provider's JSON may carry a lone UTF-16 surrogate (``"\\ud83d"``: an emoji cut in half by a
UTF-16 length limit), and some charsets (UTF-7, ``unicode_escape``) decode bytes into one. Such a
string cannot be encoded as UTF-8, so it cannot be sealed, hashed or written to Redis: it is bad
input (HTTP 400, SMTP 5xx), never a server error that the provider would retry forever.
"""

from __future__ import annotations

import hashlib
import re

# Longest provider message id taken. Ids are opaque; real ones are < 100 characters. Bounded so
# that what is stored with the message and echoed in logs and decisions stays small.
MAX_MESSAGE_ID = 1024

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate code point (not encodable as UTF-8)."""
    return _SURROGATE.search(text) is not None


def text_problem(field: str, value: object) -> str | None:
    """Why ``value`` cannot be the string field ``field``, or None when it can.

    The reason names the field and the JSON kind, never the value (it may be a citizen's text)."""
    if not isinstance(value, str):
        return f"'{field}' must be a string, not {json_kind(value)}"
    if has_surrogate(value):
        return f"'{field}' is not valid Unicode text (a lone surrogate: an emoji cut in half?)"
    return None


def json_kind(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def message_key(message_id: str) -> str:
    """The idempotency key part for a provider message id: a hash of the whole id, so that two
    long ids that differ only at the end never collide (and the Redis key stays short)."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:40]


def shown_id(message_id: str, limit: int = 100) -> str:
    """A message id as logs show it: long ids are cut, with a hash of the whole id appended so
    that two cut ids remain distinguishable."""
    if len(message_id) <= limit:
        return message_id
    return f"{message_id[: limit - 12]}…#{message_key(message_id)[:10]}"
