"""People who work the inbox: accounts, roles, per-queue rights, the password rule and lockout.

Pure rules (no I/O), from the personal-information safety measures (개인정보의 안전성 확보조치
기준, §5): accounts are personal and never shared; rights follow the role and the minimum needed
(a person sees only the queues granted to them); a safe password rule; access limited after
repeated failed logins. Storage is `gateway.staff.accounts`; the web edge is `gateway.console`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    """What a person may do besides working their queues.

    * ``admin``: accounts (add, change, disable, reset) and the access records (check, export);
    * ``telecom``: the telecom team's status page, routing rules and reports;
    * ``staff``: the queues granted to them, nothing else.
    """

    ADMIN = "admin"
    TELECOM = "telecom"
    STAFF = "staff"


ROLE_LABELS: dict[Role, str] = {Role.ADMIN: "관리자", Role.TELECOM: "통신팀", Role.STAFF: "담당자"}

ALL_QUEUES = "*"
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{2,31}$")


@dataclass(frozen=True, slots=True)
class Account:
    """One person's account. `queues` are the queues granted: exact names ("duty"), a prefix
    ending in "*" ("dept:*"), or "*" for every queue."""

    id: int
    username: str
    display_name: str
    role: Role
    queues: frozenset[str] = field(default_factory=frozenset)
    disabled: bool = False
    must_change_password: bool = False

    def may_see(self, queue: str) -> bool:
        """Whether this person may open `queue` and its threads."""
        if self.disabled:
            return False
        return any(grant == queue or (grant.endswith("*") and queue.startswith(grant[:-1])) for grant in self.queues)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN and not self.disabled

    @property
    def sees_status(self) -> bool:
        """The telecom team's status page and the reports: telecom team and admins."""
        return self.role in (Role.ADMIN, Role.TELECOM) and not self.disabled


def parse_queues(text: str) -> frozenset[str]:
    """Grants from "duty,complaint" / "dept:*" / "*" (spaces ignored, empty parts dropped)."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def username_problem(username: str) -> str | None:
    """Why a user name cannot be used, in Korean; None when it can."""
    if not USERNAME.match(username):
        return "사용자 이름은 영문 소문자로 시작하고 영문 소문자·숫자·._- 로 3~32자여야 합니다."
    return None


# ------------------------------------------------------------------ password rule
MIN_LENGTH_TWO_KINDS = 10  # KISA's guide: 10+ characters of two kinds,
MIN_LENGTH_THREE_KINDS = 8  # or 8+ of three (letters, digits, symbols).
MAX_LENGTH = 128  # Argon2 takes any length; this bounds the work a login costs.


def _kinds(password: str) -> int:
    kinds = 0
    kinds += any(c.isalpha() and c.isascii() and c.isupper() for c in password)
    kinds += any(c.isalpha() and c.isascii() and c.islower() for c in password)
    kinds += any(c.isdigit() for c in password)
    kinds += any(not c.isalnum() or not c.isascii() for c in password)
    return kinds


def password_problems(password: str, username: str = "") -> list[str]:
    """Why a new password is refused, in Korean (empty when it is acceptable).

    Upper- and lower-case letters count as two kinds; Hangul or other non-ASCII letters count
    as symbols (they are typed with a different keyboard layout, which is what the rule is for)."""
    problems = []
    password = unicodedata.normalize("NFC", password)
    kinds = _kinds(password)
    if len(password) > MAX_LENGTH:
        problems.append(f"비밀번호는 {MAX_LENGTH}자 이하여야 합니다.")
    if not (
        (kinds >= 3 and len(password) >= MIN_LENGTH_THREE_KINDS)
        or (kinds >= 2 and len(password) >= MIN_LENGTH_TWO_KINDS)
    ):
        problems.append(
            "비밀번호는 영문 대문자·소문자·숫자·특수문자 중 2종류 이상으로 10자 이상, "
            "또는 3종류 이상으로 8자 이상이어야 합니다."
        )
    if username and username.lower() in password.lower():
        problems.append("비밀번호에 사용자 이름을 넣을 수 없습니다.")
    if re.search(r"(.)\1\1\1", password):
        problems.append("같은 문자를 4번 이상 연속해서 쓸 수 없습니다.")
    if any(seq in password.lower() for seq in ("1234", "abcd", "qwer", "asdf", "password")):
        problems.append("연속된 숫자·문자나 쉽게 추측되는 단어(1234, abcd, qwer, password 등)는 쓸 수 없습니다.")
    return problems


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """Lockout after repeated failures (§5: access limited after repeated failed logins)."""

    max_failures: int = 5
    lock_s: float = 30 * 60.0

    def locked_after(self, failures: int, now: float) -> float | None:
        """Until when an account is locked after its `failures`-th consecutive failure (None:
        not locked)."""
        return now + self.lock_s if failures >= self.max_failures else None
