"""Every Redis key the gateway touches, in one table, and the functions that build them.

Why one module: a key name is a storage format. A running gateway's Redis must stay readable
by the next release, so a name may only change on purpose; with every name built here (no
f-string elsewhere in `gateway/` spells one, a unit test checks it) a change shows in one diff,
and `KEY_FAMILIES` says what each key holds, how long it lives and who writes it.

Two groups:

* `gw:...`: the gateway's own keys (guard, delivery state, citizens' threads and inbox). The
  prefix is fixed, whatever the dramatiq namespace.
* `<ns>:...`: dramatiq's Redis broker layout (`worker.namespace` in the config, "gw" by
  default). dramatiq owns it, but three Lua scripts of ours write into it (the guard's
  `claim_then`, the intake's `accept`, the enqueuer's `enqueue`: HSET `<ns>:<queue>.msgs`
  id -> message, RPUSH `<ns>:<queue>` id), and /metrics, `wait_idle` and `gateway deadletters`
  read it. That is why `pyproject.toml` pins dramatiq to one minor version and
  `tests/integration/test_dramatiq_layout.py` fails if the layout moves.

"holds" says what a value contains about a citizen: `hash` (the number's keyed HMAC, see
`gateway.outbox.store.number_hash`, never the number), `sealed` (AES-GCM, `gateway.infra.crypto`),
`plain` (no citizen data, or only ids and hashes). Sealed families also hold plain metadata.

Redis connections, one per process per purpose
----------------------------------------------

A gateway process (`gateway run`, built in `gateway.app.gateway.Gateway`) opens four:

1. `gateway.outbox.store.connect`: redis-py asyncio pool (0.25 s timeouts, bounded blocking
   pool). Staff API reads and claims, opt-out registry, delivery reports, contacts, device memory.
2. `Wire.from_url` (`Gateway.wire`): the real-time lean multiplexed connection
   (`gateway.infra.wire`): guard claims and settlements, audit entries, inbound accepts; a
   webhook or a lettering never queues behind a slow staff read on the pool.
3. `make_broker`: dramatiq's synchronous redis-py client (2 s timeouts, two retries): the
   broker object, `read_published` for /health and the backlog for /metrics (both off the loop).
4. `Wire.from_url` (the `Enqueuer`'s, 2 s timeout): enqueues from the event loop; its own
   connection so that an enqueue gets 2 s without loosening the real-time wire's 0.25 s.

A worker process (`gateway worker`, `build_worker` in `gateway.app`) opens three:

1. `make_broker`: dramatiq's consumer client (fetch, ack, heartbeats, retries, enqueues from
   the executor path), also used for `providerstats.publish`.
2. `connect(redis_url, timeout_s=2.0)`: the actors' asyncio pool, made on the actors' own event
   loop (an asyncio client belongs to one loop): send checks, attempt and sent markers,
   contacts, device memory.
3. a `Wire` to the same Redis with that client's timeouts (`wire_like`, made by
   `RedisOutboxStore`): the guard's claims and audit entries from the actors.

`gateway optout` and `gateway deadletters` open one client each (`connect` or `make_broker`).
None of these duplicates another's purpose: they differ in loop, timeouts or blocking
behaviour, so none was merged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

PREFIX = "gw:"

# ------------------------------------------------------------------ gw: keys (the gateway's own)


def optout_key(recipient_hash: str) -> str:
    return f"{PREFIX}optout:{recipient_hash}"


OPTOUT_AUDIT = PREFIX + "optout:audit"  # (never an optout_key: a number hash is 32 hex digits)


def no_lettering_key(recipient_hash: str) -> str:
    """Set when a citizen's phone answered `unsupported_device`: the next call goes to Alimtalk."""
    return f"{PREFIX}nolettering:{recipient_hash}"


def contact_key(recipient_hash: str) -> str:
    return f"{PREFIX}contact:{recipient_hash}"


def sent_key(idempotency_key: str) -> str:
    return f"{PREFIX}sent:{idempotency_key}"


def attempt_key(idempotency_key: str) -> str:
    return f"{PREFIX}attempt:{idempotency_key}"


def message_key(provider: str, reference: str) -> str:
    """A sent message's delivery state, by the provider's reference."""
    return f"{PREFIX}msg:{provider}:{reference}"


def dedupe_key(key: str) -> str:
    return PREFIX + "dedupe:" + key


def alive_key(instance: str) -> str:
    """A gateway instance's liveness heartbeat (`gateway.outbox.liveness`); "" gives the prefix."""
    return PREFIX + "alive:" + instance


def rate_key(recipient_hash: str, bucket: int | str) -> str:
    return f"{PREFIX}rate:{recipient_hash}:{bucket}"


def cap_key(key: str) -> str:
    return PREFIX + "cap:" + key


NONE_KEY = PREFIX + "none"
AUDIT_STREAM = PREFIX + "audit"
PURGE_LOCK = PREFIX + "purge:lock"  # one records purge at a time across workers


# The records the flows hand to the SQL archive (msgpack'd facts), drained by the worker's writer.
RECORDS_STREAM = PREFIX + "records"


def inbound_key(provider: str, message_key: str) -> str:
    """An inbound message's idempotency key (`message_key`: `gateway.domain.inputs.message_key`)."""
    return f"{PREFIX}in:{provider}:{message_key}"


def thread_key(tid: str) -> str:
    return f"{PREFIX}thread:{tid}"


def thread_messages_key(tid: str) -> str:
    return f"{PREFIX}thread:{tid}:msgs"


def inbox_key(queue: str) -> str:
    return f"{PREFIX}inbox:{queue}"


def thread_claim_key(tid: str) -> str:
    return f"{PREFIX}claim:{tid}"


# The staff console's per-queue indexes of threads (sorted sets, `gateway.inbox.desk`). The Lua
# steps that keep them (accept, claim, close, desk) build the same names from `DESK_PREFIX`
# (`<DESK_PREFIX><queue>:<view>`): a thread that moves queue is found in the old one's sets.
DESK_PREFIX = PREFIX + "desk:"
DESK_VIEWS = ("open", "unread", "waiting", "claimed", "closed")


def desk_key(queue: str, view: str) -> str:
    """A queue's index of threads: `view` one of `DESK_VIEWS` (see `KEY_FAMILIES` for scores)."""
    return f"{PREFIX}desk:{queue}:{view}"


def desk_mine_key(queue: str, staff: str) -> str:
    """The open threads of a queue one staff member holds (score: when the claim expires)."""
    return f"{PREFIX}desk:{queue}:mine:{staff}"


# The console's live events: a pub/sub channel (not a key), JSON {"k", "q", "t", "at"}.
CONSOLE_EVENTS = PREFIX + "console:events"


def reply_once_key(tid: str, digest: str) -> str:
    return f"{PREFIX}reply-once:{tid}:{digest}"


# ------------------------------------------------------------------ <ns>: keys (dramatiq's namespace)


def providers_key(namespace: str) -> str:
    return f"{namespace}:providers"


def queue_key(namespace: str, queue: str) -> str:
    """dramatiq's list of message ids (`queue` may be a delay queue's name, `<queue>.DQ`)."""
    return f"{namespace}:{queue}"


def queue_messages_key(namespace: str, queue: str) -> str:
    """dramatiq's hash of a queue's messages: redis message id -> encoded message."""
    return f"{namespace}:{queue}.msgs"


def dead_letters_key(namespace: str, queue: str) -> str:
    """dramatiq's dead letters: a sorted set of ids (score: when they died)."""
    return f"{namespace}:{queue}.XQ"


def dead_letters_messages_key(namespace: str, queue: str) -> str:
    """dramatiq's hash of a queue's dead letters: redis message id -> encoded message."""
    return f"{namespace}:{queue}.XQ.msgs"


def heartbeats_key(namespace: str) -> str:
    return f"{namespace}:__heartbeats__"


def acks_key(namespace: str, worker: str, queue: str) -> str:
    """A dramatiq worker's set of fetched, unacknowledged message ids (`worker` "*": a SCAN pattern)."""
    return f"{namespace}:__acks__.{worker}.{queue}"


def acks_pattern(namespace: str) -> str:
    """A SCAN pattern matching every worker's acks set (`acks_key`)."""
    return f"{namespace}:__acks__.*"


# Staff console sessions and sign-in throttles (issue #16, `gateway.staff`).
def console_session_key(session_hash: str) -> str:
    """A console session, by the SHA-256 of its id (the id itself is only in the browser)."""
    return f"{PREFIX}console:session:{session_hash}"


def console_account_sessions_key(account_id: int | str) -> str:
    """The session hashes of one account (to end them all: disabled, password reset)."""
    return f"{PREFIX}console:sessions:{account_id}"


def throttle_key(scope: str, bucket: int | str) -> str:
    """A failure counter for one scope ("login-ip:<ip>", "login-user:<name>", "token-ip:<ip>")
    in one fixed window."""
    return f"{PREFIX}throttle:{scope}:{bucket}"


# ------------------------------------------------------------------ the table


@dataclass(frozen=True, slots=True)
class KeyFamily:
    """One family of keys: `pattern` with `<placeholders>` for the builder's arguments, in order."""

    pattern: str
    build: Callable[..., str] | str  # the helper, or the constant for a single key
    type: str  # the Redis type: string, hash, stream, list, zset, set
    holds: str  # "plain", "hash" (keyed number hash) or "sealed" (AES-GCM): see the module docstring
    ttl: str  # how long a key lives, or "none: <why>"
    owner: str  # the module that writes it
    what: str


KEY_FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily(
        "gw:optout:<recipient_hash>",
        optout_key,
        "string",
        "hash",
        "none: a refusal holds until the citizen opts in again",
        "gateway.inbox.intake",
        "opt-out record, JSON {at, channel, via}; read by the guard's claim and check_send",
    ),
    KeyFamily(
        "gw:optout:audit",
        OPTOUT_AUDIT,
        "stream",
        "hash",
        "no TTL: the records purge trims entries past the consent retention (XTRIM MINID)",
        "gateway.inbox.intake",
        "one entry per opt-out/opt-in: number hash, action, channel, via, at",
    ),
    KeyFamily(
        "gw:nolettering:<recipient_hash>",
        no_lettering_key,
        "string",
        "hash",
        "messaging rules' device_memory_days",
        "gateway.outbox.store",
        "'1': the phone answered unsupported_device, so the next call gets Alimtalk",
    ),
    KeyFamily(
        "gw:contact:<recipient_hash>",
        contact_key,
        "string",
        "hash",
        "30 days (intake CONTACT_TTL_S)",
        "gateway.outbox.store",
        "the department that last messaged the citizen, JSON {department, at}",
    ),
    KeyFamily(
        "gw:sent:<idempotency_key>",
        sent_key,
        "string",
        "plain",
        "14 days",
        "gateway.outbox.store",
        "'provider:reference': a redelivered job must not resend",
    ),
    KeyFamily(
        "gw:attempt:<idempotency_key>",
        attempt_key,
        "string",
        "plain",
        "14 days",
        "gateway.outbox.store",
        "epoch of a send attempt with no recorded outcome yet",
    ),
    KeyFamily(
        "gw:msg:<provider>:<reference>",
        message_key,
        "hash",
        "plain",
        "14 days from the send (reports do not renew it)",
        "gateway.outbox.store",
        "delivery state {key, rank, status, at, detail}, moved forward only by report.lua",
    ),
    KeyFamily(
        "gw:dedupe:<key>",
        dedupe_key,
        "string",
        "plain",
        "the guard's dedupe TTL (config dedupe_ttl_s; a settle sets it again)",
        "gateway.outbox.store",
        "claim: '<epoch>', 'lease:<epoch>[:<instance>]' or 'settled:<epoch>'; key '<pbx>:<call>:<action>:<hash>'",
    ),
    KeyFamily(
        "gw:alive:<instance>",
        alive_key,
        "string",
        "plain",
        "gateway.outbox.liveness TTL_S (0.7 s), renewed every 0.25 s while the gateway runs",
        "gateway.outbox.liveness",
        "'<epoch>': this gateway instance is alive; its lettering leases may not be taken over",
    ),
    KeyFamily(
        "gw:rate:<recipient_hash>:<bucket>",
        rate_key,
        "string",
        "hash",
        "the rate window (seconds)",
        "gateway.outbox.store",
        "counter of claims in one window bucket",
    ),
    KeyFamily(
        "gw:cap:<key>",
        cap_key,
        "string",
        "hash",
        "the admission's cap TTL",
        "gateway.outbox.store",
        "'<epoch>': one message of this kind per recipient per period; key '<cap>:<hash>'",
    ),
    KeyFamily(
        "gw:none",
        NONE_KEY,
        "string",
        "plain",
        "none: never written",
        "gateway.outbox.store",
        "placeholder passed to Lua scripts for 'no key' (compared, never read or set)",
    ),
    KeyFamily(
        "gw:audit",
        AUDIT_STREAM,
        "stream",
        "hash",
        "no TTL: trimmed to about 200,000 entries (MAXLEN ~), and by the records purge past the access retention",
        "gateway.outbox.store",
        "one entry per guard decision: dedupe key, ts, verdict fields",
    ),
    KeyFamily(
        "gw:purge:lock",
        PURGE_LOCK,
        "string",
        "plain",
        "the purge's lock time (SET NX EX), deleted by its holder when the purge ends",
        "gateway.records.retention",
        "a random token: the worker running the daily records purge",
    ),
    KeyFamily(
        "gw:records",
        RECORDS_STREAM,
        "stream",
        "sealed",
        "none: trimmed to records.stream_maxlen (MAXLEN ~); drained by the worker",
        "gateway.records.emitter",
        "one entry per fact for the SQL archive (field 'f': msgpack of to_wire(fact): number hashes, sealed texts); "
        "the worker's RecordsWriter (consumer group 'records') writes, acknowledges and deletes them",
    ),
    KeyFamily(
        "gw:in:<provider>:<message_key>",
        inbound_key,
        "string",
        "plain",
        "30 days (intake IDEMPOTENCY_TTL_S)",
        "gateway.inbox.intake",
        "'<thread>|<queue>': a provider's retry of a stored message is a duplicate",
    ),
    KeyFamily(
        "gw:thread:<tid>",
        thread_key,
        "hash",
        "sealed",
        "no TTL: the records purge deletes it once its last activity is past the messages' retention",
        "gateway.inbox.intake",
        "{to, sender (sealed), sender_hash, queue, created_at, last_at, count}",
    ),
    KeyFamily(
        "gw:thread:<tid>:msgs",
        thread_messages_key,
        "stream",
        "sealed",
        "no TTL: the conversation itself, deleted with its thread by the records purge",
        "gateway.inbox.intake",
        "one entry per message in or out: dir, at, text (sealed), message_id/provider or action",
    ),
    KeyFamily(
        "gw:inbox:<queue>",
        inbox_key,
        "stream",
        "plain",
        "no TTL: the records purge trims entries past the messages' retention (XTRIM MINID)",
        "gateway.inbox.intake",
        "one entry per accepted message: thread, at, priority, rule, tags, message_id",
    ),
    KeyFamily(
        "gw:claim:<tid>",
        thread_claim_key,
        "string",
        "plain",
        "1 hour (intake CLAIM_TTL_S)",
        "gateway.inbox.intake",
        "the staff member working the thread",
    ),
    KeyFamily(
        "gw:desk:<queue>:<view>",
        desk_key,
        "zset",
        "plain",
        "none: kept by the intake's Lua steps (and the records purge) as threads come and go; "
        "'closed' is bounded (intake CLOSED_KEEP per queue)",
        "gateway.inbox.intake",
        "thread ids of a queue by view: open/unread (score: last activity), waiting (unanswered since), "
        "claimed (claim expiry), closed (closed at)",
    ),
    KeyFamily(
        "gw:desk:<queue>:mine:<staff>",
        desk_mine_key,
        "zset",
        "plain",
        "none: members past their score (the claim's expiry) are pruned when read or purged",
        "gateway.inbox.intake",
        "the open threads of a queue a staff member holds, score: the claim's expiry",
    ),
    KeyFamily(
        "gw:reply-once:<tid>:<digest>",
        reply_once_key,
        "string",
        "plain",
        "60 s (intake REPLY_ONCE_S)",
        "gateway.inbox.intake",
        "'1': the same staff reply within a minute is a double click",
    ),
    KeyFamily(
        "gw:console:session:<session_hash>",
        console_session_key,
        "hash",
        "plain",
        "the console's idle timeout, refreshed by every request (gateway.staff.sessions)",
        "gateway.staff.sessions",
        "account id, CSRF token, created at, IP of a signed-in console session",
    ),
    KeyFamily(
        "gw:console:sessions:<account_id>",
        console_account_sessions_key,
        "set",
        "plain",
        "the console's maximum session age, renewed by every sign-in",
        "gateway.staff.sessions",
        "session hashes of one account (members whose session expired are dropped when read)",
    ),
    KeyFamily(
        "gw:throttle:<scope>:<bucket>",
        throttle_key,
        "string",
        "plain",
        "the throttle's window (gateway.staff.throttle)",
        "gateway.staff.throttle",
        "failures counted in one window for a sign-in IP, user name or staff-API client IP",
    ),
    KeyFamily(
        "<namespace>:providers",
        providers_key,
        "hash",
        "plain",
        "600 s, renewed by every publish",
        "gateway.outbox.providerstats",
        "field '<provider>@<worker>': that worker's circuit and error counts, JSON",
    ),
    KeyFamily(
        "<namespace>:<queue>",
        queue_key,
        "list",
        "plain",
        "none: dramatiq's queue",
        "dramatiq (and our claim/accept/enqueue scripts)",
        "redis message ids to run; `<queue>.DQ`: delayed ones",
    ),
    KeyFamily(
        "<namespace>:<queue>.msgs",
        queue_messages_key,
        "hash",
        "sealed",
        "none: dramatiq's, removed on ack",
        "dramatiq (and our claim/accept/enqueue scripts)",
        "redis message id -> msgpack message (citizen number and texts sealed)",
    ),
    KeyFamily(
        "<namespace>:<queue>.XQ",
        dead_letters_key,
        "zset",
        "sealed",
        "dramatiq's dead message TTL",
        "dramatiq (gateway.messaging.jobs.redrive removes)",
        "dead letters: ids by time of death",
    ),
    KeyFamily(
        "<namespace>:<queue>.XQ.msgs",
        dead_letters_messages_key,
        "hash",
        "sealed",
        "dramatiq's dead message TTL",
        "dramatiq (gateway.messaging.jobs.redrive removes)",
        "redis message id -> msgpack message of a dead letter",
    ),
    KeyFamily(
        "<namespace>:__heartbeats__",
        heartbeats_key,
        "zset",
        "plain",
        "none: dramatiq's",
        "dramatiq (read by gateway.messaging.backlog)",
        "live workers by last beat",
    ),
    KeyFamily(
        "<namespace>:__acks__.<worker>.<queue>",
        acks_key,
        "set",
        "plain",
        "none: dramatiq's",
        "dramatiq (read by metrics and wait_idle)",
        "ids a worker fetched, not yet acked",
    ),
)


def lua_script(package: str, name: str) -> str:
    """The text of `<package>/lua/<name>`, shipped as package data (read once, at import)."""
    return resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
