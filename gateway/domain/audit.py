"""Access records (접속기록) and account-change records, hash-chained against tampering.

The safety measures (§8) ask, for every access by staff to citizens' data: the account, the date
and time, where from (IP), whose data (the data subject's identifier: here a thread id or a
number's keyed hash, never the number) and what was done. They must be kept (2 years; account
grants and changes 3 years), checked monthly, and protected against forgery and alteration.

Each record carries the keyed hash (HMAC-SHA256) of its own content and of the previous record's
hash. Editing a row breaks its hash; deleting one breaks the sequence and the next row's `prev`;
deleting the newest rows is caught against the chain's head, kept apart. The key comes from the
environment, so someone with write access to the database alone cannot recompute a chain. The
retention purge removes the oldest rows and writes the last removed row's (seq, hash) as the
chain's anchor, from which verification starts.

Pure: the storage is `gateway.staff.audit`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

GENESIS = "0" * 64  # the `prev` of a chain's first record


class Chain(StrEnum):
    """Two chains with different retention: access records (2 years) and account changes (3 years)."""

    ACCESS = "access"
    ACCOUNTS = "accounts"


class Action(StrEnum):
    """What was done (the record's `action`); Korean labels in `ACTION_LABELS`."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOCKED = "locked"
    LOGOUT = "logout"
    SESSION_EXPIRED = "session_expired"
    TOKEN_USED = "token_used"
    TOKEN_REFUSED = "token_refused"
    VIEW_INBOX = "view_inbox"
    VIEW_THREAD = "view_thread"
    REVEAL_NUMBER = "reveal_number"
    DENIED = "denied"  # an attempt at something the person has no right to
    CLAIM = "claim"
    HANDOVER = "handover"
    REPLY = "reply"
    NOTE = "note"
    TAG = "tag"
    CLOSE = "close"
    OPTOUT_VIEW = "optout_view"
    OPTOUT_CHANGE = "optout_change"
    EXPORT = "export"  # a download of personal data (with its reason)
    REPORT = "report"  # a report download (aggregates, no personal data)
    AUDIT_VIEW = "audit_view"
    AUDIT_EXPORT = "audit_export"
    # account changes (the ACCOUNTS chain)
    ACCOUNT_ADD = "account_add"
    ACCOUNT_CHANGE = "account_change"
    ACCOUNT_DISABLE = "account_disable"
    ACCOUNT_ENABLE = "account_enable"
    PASSWORD_RESET = "password_reset"
    PASSWORD_CHANGE = "password_change"
    TOKEN_ISSUE = "token_issue"
    TOKEN_REVOKE = "token_revoke"
    UNLOCK = "unlock"


ACCOUNT_ACTIONS = frozenset(
    {
        Action.ACCOUNT_ADD,
        Action.ACCOUNT_CHANGE,
        Action.ACCOUNT_DISABLE,
        Action.ACCOUNT_ENABLE,
        Action.PASSWORD_RESET,
        Action.PASSWORD_CHANGE,
        Action.TOKEN_ISSUE,
        Action.TOKEN_REVOKE,
        Action.UNLOCK,
    }
)

ACTION_LABELS: dict[str, str] = {
    Action.LOGIN: "로그인",
    Action.LOGIN_FAILED: "로그인 실패",
    Action.LOCKED: "계정 잠김",
    Action.LOGOUT: "로그아웃",
    Action.SESSION_EXPIRED: "세션 만료",
    Action.TOKEN_USED: "API 토큰 사용",
    Action.TOKEN_REFUSED: "API 토큰 거부",
    Action.VIEW_INBOX: "목록 조회",
    Action.VIEW_THREAD: "대화 조회",
    Action.REVEAL_NUMBER: "전화번호 확인",
    Action.DENIED: "권한 없는 접근 시도",
    Action.CLAIM: "담당 지정",
    Action.HANDOVER: "담당 넘김",
    Action.REPLY: "답장",
    Action.NOTE: "메모",
    Action.TAG: "태그",
    Action.CLOSE: "종결",
    Action.OPTOUT_VIEW: "수신거부 조회",
    Action.OPTOUT_CHANGE: "수신거부 변경",
    Action.EXPORT: "개인정보 내려받기",
    Action.REPORT: "보고서 내려받기",
    Action.AUDIT_VIEW: "접속기록 조회",
    Action.AUDIT_EXPORT: "접속기록 내려받기",
    Action.ACCOUNT_ADD: "계정 생성",
    Action.ACCOUNT_CHANGE: "권한 변경",
    Action.ACCOUNT_DISABLE: "계정 비활성화",
    Action.ACCOUNT_ENABLE: "계정 활성화",
    Action.PASSWORD_RESET: "비밀번호 초기화",
    Action.PASSWORD_CHANGE: "비밀번호 변경",
    Action.TOKEN_ISSUE: "API 토큰 발급",
    Action.TOKEN_REVOKE: "API 토큰 폐기",
    Action.UNLOCK: "잠금 해제",
}


def chain_of(action: str) -> Chain:
    """Which chain a record of `action` goes to."""
    return Chain.ACCOUNTS if action in ACCOUNT_ACTIONS else Chain.ACCESS


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One access, before it is chained: who (`account`: the user name, "" before a login
    succeeded), from where (`ip`), whose data (`subject`: a thread id or a number's keyed hash),
    what (`action`, `target`: other ids such as the queue or the account changed), with what
    result ("ok", "denied", "failed") and `detail` (a download's stated reason, a refusal's
    cause: never a citizen's text or number)."""

    at: float
    account: str
    ip: str
    action: str
    subject: str = ""
    target: str = ""
    result: str = "ok"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """A chained access record as stored."""

    chain: str
    seq: int
    entry: AccessEntry
    prev: str
    hash: str


def canonical(chain: str, seq: int, entry: AccessEntry, prev: str) -> bytes:
    """The bytes a record's hash covers (stable: sorted JSON, times to the microsecond)."""
    body = {
        "chain": chain,
        "seq": seq,
        "at": f"{entry.at:.6f}",
        "account": entry.account,
        "ip": entry.ip,
        "action": entry.action,
        "subject": entry.subject,
        "target": entry.target,
        "result": entry.result,
        "detail": entry.detail,
        "prev": prev,
    }
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(key: bytes, chain: str, seq: int, entry: AccessEntry, prev: str) -> str:
    """The record's keyed hash (HMAC-SHA256, hex)."""
    return hmac.new(key, canonical(chain, seq, entry, prev), hashlib.sha256).hexdigest()


def audit_key(number_key: bytes) -> bytes:
    """The chains' HMAC key, derived from the gateway's number key (a secret already held in the
    environment and never rotated lightly: the number hashes depend on it too)."""
    return hmac.new(number_key, b"gateway access-record chain v1", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """`ok`, how many records were checked, and the first problem (its seq and what is wrong)."""

    chain: str
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""


def verify_chain(
    key: bytes,
    chain: str,
    records: Iterable[AccessRecord],
    *,
    anchor: tuple[int, str] = (0, GENESIS),
    head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Check a chain's records in seq order: each record's hash, its link to the previous one,
    no gap in the sequence from the anchor (the last purged record, or (0, GENESIS)), and the
    last record against the chain's head (None: no head to compare with)."""
    expect_seq, prev = anchor[0] + 1, anchor[1]
    checked = 0
    for record in records:
        if record.seq != expect_seq:
            return VerifyResult(
                chain, False, checked, expect_seq, f"record {expect_seq} is missing (next is {record.seq})"
            )
        if record.prev != prev:
            return VerifyResult(chain, False, checked, record.seq, "link to the previous record broken")
        if not hmac.compare_digest(record.hash, chain_hash(key, chain, record.seq, record.entry, record.prev)):
            return VerifyResult(chain, False, checked, record.seq, "record altered (hash mismatch)")
        checked += 1
        expect_seq, prev = record.seq + 1, record.hash
    if head is not None and (head[0] != expect_seq - 1 or (head[0] > anchor[0] and head[1] != prev)):
        return VerifyResult(
            chain,
            False,
            checked,
            expect_seq,
            f"the newest records are missing (head is {head[0]}, last found {expect_seq - 1})",
        )
    return VerifyResult(chain, True, checked)
