"""Staff accounts and their API tokens in the records store: `SqlStaffDirectory`.

* Sign-in (`login`): Argon2id (`gateway.staff.passwords`), run in a thread; an unknown user
  name and a wrong password both cost one verification (no timing oracle). Consecutive
  failures are counted per account and lock it for the policy's time after its limit
  (`gateway.domain.staff.LoginPolicy`); a locked or disabled account fails even with the right
  password. Failed sign-ins are also throttled per client address and per user name (a
  `Throttle`, when given): a throttled attempt is refused before any password is checked.
  Every outcome is an access record (LOGIN, LOGIN_FAILED, LOCKED on the ACCESS chain).
* Staff-API tokens: ``gwt_<id>.<secret>``, 256 random bits of secret of which only the SHA-256
  is stored; compared in constant time; revocable; `last_used_at` written at most once a minute.
* Administration (add, change, disable, enable, reset, unlock, issue and revoke tokens, a
  person's own password change): each one an access record on the ACCOUNTS chain (who did it,
  to whom, what changed; never a password), written before the change is made: a change that
  cannot be recorded is not made.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import insert, select, update

from gateway.domain.audit import AccessEntry, Action
from gateway.domain.staff import Account, LoginPolicy, Role, parse_queues, password_problems, username_problem
from gateway.errors import BadRequest, GatewayError, StoreUnavailable
from gateway.ports import AccessLog, LoginOutcome, SessionStore
from gateway.records.schema import staff_accounts, staff_tokens
from gateway.records.store import _WRITE_OPTION, RecordsError, RecordsStore
from gateway.staff import passwords
from gateway.staff import throttle as limits
from gateway.staff.throttle import Throttle

T = TypeVar("T")

TOKEN_PREFIX = "gwt_"
TOKEN_TOUCH_S = 60.0  # last_used_at is written at most this often per token
TEMP_PASSWORD_LENGTH = 14


class AccountProblem(BadRequest):
    """An administration request that cannot be done: the message says why, in Korean."""


class AccountNotFound(GatewayError):
    """No account (or token) by that name."""

    http_status = 404


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account with what the admin pages show beside it (never its password hash)."""

    account: Account
    failed_logins: int
    locked_until: float | None
    last_login_at: float | None
    password_changed_at: float
    created_at: float

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A staff-API token as listed (the secret is never stored)."""

    id: str
    username: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


def generate_password() -> str:
    """A temporary password that passes the password rule (letters of both cases, digits, symbols)."""
    alphabet = string.ascii_letters + string.digits + "!#%+-=?@_"
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(TEMP_PASSWORD_LENGTH))
        if (
            not password_problems(candidate)
            and sum(
                (
                    any(c.islower() for c in candidate),
                    any(c.isupper() for c in candidate),
                    any(c.isdigit() for c in candidate),
                    any(not c.isalnum() for c in candidate),
                )
            )
            == 4
        ):
            return candidate


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_DUMMY_SECRET_HASH = _secret_hash("no token has this secret")


def _account_of(row: Any) -> Account:
    try:
        role = Role(row.role)
    except ValueError:
        role = Role.STAFF
    return Account(
        id=int(row.id),
        username=row.username,
        display_name=row.display_name,
        role=role,
        queues=parse_queues(row.queues or ""),
        disabled=bool(row.disabled),
        must_change_password=bool(row.must_change_password),
    )


def _info_of(row: Any) -> AccountInfo:
    return AccountInfo(
        account=_account_of(row),
        failed_logins=int(row.failed_logins or 0),
        locked_until=row.locked_until,
        last_login_at=row.last_login_at,
        password_changed_at=float(row.password_changed_at),
        created_at=float(row.created_at),
    )


def queues_text(queues: frozenset[str]) -> str:
    return ",".join(sorted(queues))


class SqlStaffDirectory:
    """`gateway.ports.StaffDirectory` and the administration of accounts (module docstring).

    `sessions`, when given, lets a disable or a password reset end the person's console
    sessions at once (otherwise they end at their next request: the console checks the
    account on every request)."""

    def __init__(
        self,
        store: RecordsStore,
        access: AccessLog,
        policy: LoginPolicy,
        throttle: Throttle | None = None,
        *,
        sessions: SessionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.access = access
        self.policy = policy
        self.throttle = throttle
        self.sessions = sessions
        self.clock = clock
        self._writer = store.engine.execution_options(**{_WRITE_OPTION: True})

    # -- plumbing -------------------------------------------------------------------------

    async def _db(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.store._guard(what, op)
        except RecordsError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _row(self, **where: Any) -> Any:
        a = staff_accounts.c
        query = select(staff_accounts)
        for name, value in where.items():
            query = query.where(a[name] == value)

        async def op() -> Any:
            async with self.store.engine.connect() as conn:
                return (await conn.execute(query)).one_or_none()

        return await self._db("reading staff accounts", op)

    async def _update(self, account_id: int, **values: Any) -> None:
        async def op() -> None:
            async with self._writer.begin() as conn:
                await conn.execute(update(staff_accounts).where(staff_accounts.c.id == account_id).values(**values))

        await self._db("updating a staff account", op)

    async def _record(
        self,
        action: str,
        *,
        actor: str,
        ip: str,
        target: str = "",
        result: str = "ok",
        detail: str = "",
        subject: str = "",
    ) -> None:
        await self.access.record(
            AccessEntry(
                at=self.clock(),
                account=actor,
                ip=ip,
                action=action,
                subject=subject,
                target=target,
                result=result,
                detail=detail,
            )
        )

    async def _existing(self, username: str) -> Any:
        row = await self._row(username=username)
        if row is None:
            raise AccountNotFound(f"계정 {username!r}이(가) 없습니다.")
        return row

    # -- reading --------------------------------------------------------------------------

    async def account(self, account_id: int) -> Account | None:
        row = await self._row(id=account_id)
        return None if row is None else _account_of(row)

    async def by_username(self, username: str) -> Account | None:
        row = await self._row(username=username)
        return None if row is None else _account_of(row)

    async def accounts(self) -> Sequence[Account]:
        return [i.account for i in await self.infos()]

    async def infos(self) -> list[AccountInfo]:
        """Every account with its sign-in state, by user name."""

        async def op() -> list[AccountInfo]:
            async with self.store.engine.connect() as conn:
                rows = (await conn.execute(select(staff_accounts).order_by(staff_accounts.c.username))).all()
            return [_info_of(r) for r in rows]

        return await self._db("reading staff accounts", op)

    async def info(self, username: str) -> AccountInfo | None:
        row = await self._row(username=username)
        return None if row is None else _info_of(row)

    # -- signing in -----------------------------------------------------------------------

    async def login(self, username: str, password: str, *, ip: str) -> LoginOutcome:
        """Check a password (see the module docstring). Besides the port's reasons, "throttled":
        too many failures from this address or for this name lately (nothing was checked)."""
        username = username.strip().lower()
        named = username if username_problem(username) is None else ""
        now = self.clock()
        if self.throttle is not None:
            ip_limit, ip_window = limits.LOGIN_PER_IP
            user_limit, user_window = limits.LOGIN_PER_USER
            if await self.throttle.blocked(f"login-ip:{ip}", ip_limit, ip_window) or (
                named and await self.throttle.blocked(f"login-user:{named}", user_limit, user_window)
            ):
                return LoginOutcome(None, "throttled")
        row = await self._row(username=username) if named else None
        stored = row.password_hash if row is not None else passwords.DUMMY_HASH
        # Always one verification, whatever follows: the answer's time tells nothing.
        matches = await passwords.verify_async(stored, password[: 4 * 128])
        if row is None:
            await self._failed(named, ip, "unknown")
            return LoginOutcome(None, "unknown")
        if row.disabled:
            await self._failed(named, ip, "disabled")
            return LoginOutcome(None, "disabled")
        if row.locked_until is not None and row.locked_until > now:
            await self._failed(named, ip, "locked")
            return LoginOutcome(None, "locked", float(row.locked_until))
        if not matches:
            failures, locked_until = await self._count_failure(int(row.id), now)
            await self._failed(named, ip, "wrong_password")
            if locked_until is not None:
                await self._record(
                    Action.LOCKED,
                    actor=named,
                    ip=ip,
                    target=named,
                    result="failed",
                    detail=f"{failures} consecutive failures",
                )
                return LoginOutcome(None, "locked", locked_until)
            return LoginOutcome(None, "wrong_password")
        await self._record(Action.LOGIN, actor=named, ip=ip)
        values: dict[str, Any] = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
        if passwords.needs_rehash(row.password_hash):
            values["password_hash"] = await passwords.hash_async(password)
        await self._update(int(row.id), **values)
        return LoginOutcome(_account_of(row))

    async def _failed(self, named: str, ip: str, why: str) -> None:
        """A failed sign-in's record and throttle counts."""
        await self._record(Action.LOGIN_FAILED, actor=named, ip=ip, result="failed", detail=why)
        if self.throttle is not None:
            await self.throttle.fail(f"login-ip:{ip}", limits.LOGIN_PER_IP[1])
            if named:
                await self.throttle.fail(f"login-user:{named}", limits.LOGIN_PER_USER[1])

    async def _count_failure(self, account_id: int, now: float) -> tuple[int, float | None]:
        """One more consecutive failure (atomically); the count and, when it locks the account,
        until when. The count starts again after a lock."""
        a = staff_accounts.c

        async def op() -> tuple[int, float | None]:
            async with self._writer.begin() as conn:
                await conn.execute(
                    update(staff_accounts).where(a.id == account_id).values(failed_logins=a.failed_logins + 1)
                )
                failures = int((await conn.execute(select(a.failed_logins).where(a.id == account_id))).scalar_one())
                until = self.policy.locked_after(failures, now)
                if until is not None:
                    await conn.execute(
                        update(staff_accounts).where(a.id == account_id).values(failed_logins=0, locked_until=until)
                    )
            return failures, until

        return await self._db("counting a failed sign-in", op)

    # -- staff-API tokens -----------------------------------------------------------------

    async def account_for_token(self, token: str) -> Account | None:
        token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition(".")
        # (a header's non-UTF-8 bytes arrive as surrogate escapes: never a token of ours)
        if not token.startswith(TOKEN_PREFIX) or not token_id or not secret or len(token) > 200 or not token.isascii():
            return None
        t, a = staff_tokens.c, staff_accounts.c

        async def op() -> tuple[Any, Any]:
            async with self.store.engine.connect() as conn:
                trow = (await conn.execute(select(staff_tokens).where(t.id == token_id))).one_or_none()
                arow = None
                if trow is not None:
                    arow = (await conn.execute(select(staff_accounts).where(a.id == trow.account_id))).one_or_none()
            return trow, arow

        trow, arow = await self._db("checking a staff-API token", op)
        expected = trow.secret_hash if trow is not None else _DUMMY_SECRET_HASH
        if not hmac.compare_digest(_secret_hash(secret), expected) or trow is None:
            return None
        if trow.revoked_at is not None or arow is None or arow.disabled:
            return None
        now = self.clock()
        if trow.last_used_at is None or now - trow.last_used_at >= TOKEN_TOUCH_S:

            async def touch() -> None:
                async with self._writer.begin() as conn:
                    await conn.execute(update(staff_tokens).where(t.id == token_id).values(last_used_at=now))

            await self._db("noting a token's use", touch)
        return _account_of(arow)

    async def issue_token(self, actor: str, username: str, label: str = "", *, ip: str = "") -> str:
        """A new token for `username` (shown once: only its hash is kept)."""
        row = await self._existing(username)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)  # 256 bits
        label = label.strip()[:64]
        await self._record(
            Action.TOKEN_ISSUE, actor=actor, ip=ip, target=username, detail=f"token={token_id} label={label}"
        )

        async def op() -> None:
            async with self._writer.begin() as conn:
                await conn.execute(
                    insert(staff_tokens).values(
                        id=token_id,
                        account_id=int(row.id),
                        secret_hash=_secret_hash(secret),
                        label=label,
                        created_at=self.clock(),
                    )
                )

        await self._db("issuing a token", op)
        return f"{TOKEN_PREFIX}{token_id}.{secret}"

    async def revoke_token(self, actor: str, token_id: str, *, ip: str = "") -> bool:
        """Revoke a token by its id (the part before the dot): False when it was already revoked."""
        token_id = token_id.removeprefix(TOKEN_PREFIX).partition(".")[0]
        t = staff_tokens.c

        async def find() -> Any:
            async with self.store.engine.connect() as conn:
                query = select(staff_tokens, staff_accounts.c.username).join(
                    staff_accounts, staff_accounts.c.id == t.account_id
                )
                return (await conn.execute(query.where(t.id == token_id))).one_or_none()

        row = await self._db("reading a token", find)
        if row is None:
            raise AccountNotFound(f"토큰 {token_id!r}이(가) 없습니다.")
        if row.revoked_at is not None:
            return False
        await self._record(Action.TOKEN_REVOKE, actor=actor, ip=ip, target=row.username, detail=f"token={token_id}")

        async def op() -> None:
            async with self._writer.begin() as conn:
                await conn.execute(update(staff_tokens).where(t.id == token_id).values(revoked_at=self.clock()))

        await self._db("revoking a token", op)
        return True

    async def tokens(self, username: str | None = None) -> list[TokenInfo]:
        """Tokens (of `username`, or everyone's), newest first."""
        t = staff_tokens.c

        async def op() -> list[TokenInfo]:
            query = select(staff_tokens, staff_accounts.c.username).join(
                staff_accounts, staff_accounts.c.id == t.account_id
            )
            if username:
                query = query.where(staff_accounts.c.username == username)
            async with self.store.engine.connect() as conn:
                rows = (await conn.execute(query.order_by(t.created_at.desc()))).all()
            return [TokenInfo(r.id, r.username, r.label, r.created_at, r.last_used_at, r.revoked_at) for r in rows]

        return await self._db("reading tokens", op)

    # -- administration -------------------------------------------------------------------

    async def add(
        self,
        actor: str,
        username: str,
        display_name: str,
        role: str,
        *,
        queues: str | frozenset[str] = "",
        password: str | None = None,
        ip: str = "",
        must_change_password: bool | None = None,
    ) -> tuple[Account, str]:
        """A new account: (the account, its password). Without `password` a temporary one is
        generated, to be changed at the first sign-in."""
        username = username.strip().lower()
        problem = username_problem(username)
        if problem:
            raise AccountProblem(problem)
        name, role_, grants = _checked(display_name, role, queues)
        if password is None:
            password = generate_password()
            must_change = True if must_change_password is None else must_change_password
        else:
            problems = password_problems(password, username) if _encodable(password) else [UNREADABLE]
            if problems:
                raise AccountProblem(" ".join(problems))
            must_change = bool(must_change_password)
        if await self._row(username=username) is not None:
            raise AccountProblem(f"사용자 이름 {username!r}은(는) 이미 있습니다.")
        hashed = await passwords.hash_async(password)
        await self._record(
            Action.ACCOUNT_ADD,
            actor=actor,
            ip=ip,
            target=username,
            detail=f"role={role_} queues={queues_text(grants)}",
        )
        now = self.clock()

        async def op() -> int:
            async with self._writer.begin() as conn:
                result = await conn.execute(
                    insert(staff_accounts)
                    .values(
                        username=username,
                        display_name=name,
                        role=str(role_),
                        queues=queues_text(grants),
                        password_hash=hashed,
                        must_change_password=must_change,
                        disabled=False,
                        failed_logins=0,
                        password_changed_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(staff_accounts.c.id)
                )
                return int(result.scalar_one())

        account_id = await self._db("adding a staff account", op)
        account = Account(account_id, username, name, role_, grants, False, must_change)
        return account, password

    async def update(
        self,
        actor: str,
        username: str,
        *,
        display_name: str | None = None,
        role: str | None = None,
        queues: str | frozenset[str] | None = None,
        ip: str = "",
    ) -> Account:
        """Change a person's name, role or queues (what is None stays)."""
        row = await self._existing(username)
        current = _account_of(row)
        name, role_, grants = _checked(
            current.display_name if display_name is None else display_name,
            str(current.role) if role is None else role,
            current.queues if queues is None else queues,
        )
        changes = []
        if name != current.display_name:
            changes.append(f"name={name}")
        if role_ != current.role:
            changes.append(f"role={role_}")
        if grants != current.queues:
            changes.append(f"queues={queues_text(grants)}")
        if not changes:
            return current
        await self._record(Action.ACCOUNT_CHANGE, actor=actor, ip=ip, target=username, detail=" ".join(changes))
        await self._update(
            current.id, display_name=name, role=str(role_), queues=queues_text(grants), updated_at=self.clock()
        )
        return Account(current.id, username, name, role_, grants, current.disabled, current.must_change_password)

    async def disable(self, actor: str, username: str, *, ip: str = "") -> bool:
        """Disable an account (its sessions end; its tokens stop working): False if it was."""
        row = await self._existing(username)
        if row.disabled:
            return False
        await self._record(Action.ACCOUNT_DISABLE, actor=actor, ip=ip, target=username)
        await self._update(int(row.id), disabled=True, updated_at=self.clock())
        if self.sessions is not None:
            await self.sessions.destroy_all(int(row.id))
        return True

    async def enable(self, actor: str, username: str, *, ip: str = "") -> bool:
        row = await self._existing(username)
        if not row.disabled:
            return False
        await self._record(Action.ACCOUNT_ENABLE, actor=actor, ip=ip, target=username)
        await self._update(int(row.id), disabled=False, updated_at=self.clock())
        return True

    async def unlock(self, actor: str, username: str, *, ip: str = "") -> None:
        row = await self._existing(username)
        await self._record(Action.UNLOCK, actor=actor, ip=ip, target=username)
        await self._update(int(row.id), failed_logins=0, locked_until=None, updated_at=self.clock())

    async def reset_password(
        self, actor: str, username: str, *, ip: str = "", must_change_password: bool = True
    ) -> str:
        """A temporary password (shown once), to be changed at the next sign-in (unless
        `must_change_password` is False: the demo's own account); the person's sessions end
        and the account is unlocked."""
        row = await self._existing(username)
        password = generate_password()
        hashed = await passwords.hash_async(password)
        await self._record(Action.PASSWORD_RESET, actor=actor, ip=ip, target=username)
        now = self.clock()
        await self._update(
            int(row.id),
            password_hash=hashed,
            must_change_password=must_change_password,
            failed_logins=0,
            locked_until=None,
            password_changed_at=now,
            updated_at=now,
        )
        if self.sessions is not None:
            await self.sessions.destroy_all(int(row.id))
        return password

    async def change_password(self, account: Account, old: str, new: str, *, ip: str = "") -> None:
        """A person's own new password: the old one must match; the rule applies; not the same."""
        row = await self._existing(account.username)
        if not await passwords.verify_async(row.password_hash, old):
            raise AccountProblem("현재 비밀번호가 맞지 않습니다.")
        if new == old:
            raise AccountProblem("새 비밀번호는 현재 비밀번호와 달라야 합니다.")
        problems = password_problems(new, account.username) if _encodable(new) else [UNREADABLE]
        if problems:
            raise AccountProblem(" ".join(problems))
        hashed = await passwords.hash_async(new)
        await self._record(Action.PASSWORD_CHANGE, actor=account.username, ip=ip, target=account.username)
        now = self.clock()
        await self._update(
            int(row.id), password_hash=hashed, must_change_password=False, password_changed_at=now, updated_at=now
        )


UNREADABLE = "비밀번호에 쓸 수 없는 문자가 들어 있습니다."


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (a lone surrogate cannot be hashed or stored)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _checked(display_name: str, role: str, queues: str | frozenset[str]) -> tuple[str, Role, frozenset[str]]:
    name = " ".join(display_name.split())
    if not name or len(name) > 64:
        raise AccountProblem("이름은 1~64자로 적어 주세요.")
    try:
        role_ = Role(role.strip().lower())
    except ValueError:
        raise AccountProblem("역할은 admin(관리자), telecom(통신팀), staff(담당자) 중 하나여야 합니다.") from None
    grants = parse_queues(queues) if isinstance(queues, str) else frozenset(queues)
    if any(len(g) > 64 or "," in g for g in grants) or len(queues_text(grants)) > 1000:
        raise AccountProblem("담당 큐 이름이 너무 깁니다.")
    return name, role_, grants
