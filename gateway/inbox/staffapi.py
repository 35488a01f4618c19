"""HTTP edge for the city's staff: the `/api/...` routes, each person with a token of their own.

Every route needs ``Authorization: Bearer gwt_<id>.<secret>``, a per-person token issued with
`gateway staff token USER` (`gateway.staff.accounts`); the person acting is the token's account
(a ``staff`` field in a body is ignored). A person sees and works only the queues granted to
them: any other queue's list or thread answers 403, and the attempt is recorded (DENIED).

* `GET /api/inbox/{queue}?count=N`: a queue's newest threads.
* `GET /api/threads/{id}`: one thread with its messages.
* `POST /api/threads/{id}/claim`: claim a thread (409 with ``claimed_by`` when someone else
  has it; claiming again is no error).
* `POST /api/threads/{id}/reply` ``{"text"}``: answer it; only its claimer may (an unclaimed
  thread is claimed by its first answer); posting the same reply again is no error.
* `POST /api/threads/{id}/close`: close it (200 ``{"closed": true, "already": false}``; closing
  again is no error: ``"already": true``); a new message from the citizen re-opens it.
* `POST /api/optout` ``{"number", "action": "add"|"remove"}`` and `GET /api/optout/{number}`:
  the opt-out register, by hand.

Every route writes its access record (접속기록: VIEW_INBOX, VIEW_THREAD, CLAIM, REPLY, CLOSE,
OPTOUT_VIEW, OPTOUT_CHANGE; the subject a thread id or the number's keyed hash, never the
number) before it answers or acts: a record that cannot be written is a 503 and nothing is done.
Refused tokens are recorded (TOKEN_REFUSED) and throttled per client address (429).

Every error is JSON ``{"error": ...}`` with the status its class carries
(`gateway.infra.http.error_response`); bad input is logged as one rate-limited WARNING per route
and kind, never with the input (`gateway.infra.edgelog`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from gateway.domain.audit import AccessEntry, Action
from gateway.domain.inputs import text_problem
from gateway.domain.numbers import NumberPlan
from gateway.domain.staff import Account
from gateway.errors import BadRequest, ClaimedByOther, StoreUnavailable, ThreadNotFound
from gateway.inbox.intake import InboundRejected, Intake, OptedOut
from gateway.infra.edgelog import MalformedLog
from gateway.infra.http import error_response, json_error, refused
from gateway.infra.rediskeys import thread_key
from gateway.outbox.store import number_hash
from gateway.ports import AccessLog, StaffDirectory
from gateway.staff import throttle as limits
from gateway.staff.throttle import Throttle

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The person a request's token belongs to (set by the token check, read by the routes).
STAFF_ACCOUNT: web.RequestKey[Account] = web.RequestKey("staff_account", Account)


def add_routes(
    app: web.Application,
    intake: Intake,
    *,
    directory: StaffDirectory,
    access: AccessLog,
    plan: NumberPlan,
    throttle: Throttle | None = None,
) -> None:
    """The staff API on `app`: every route behind a person's bearer token (`directory`), its
    access records in `access`, refused tokens throttled per address by `throttle`."""
    malformed = MalformedLog(log)
    token_limit, token_window = limits.TOKEN_PER_IP

    async def note(request: web.Request, action: str, **fields: str) -> None:
        """The request's access record; StoreUnavailable (a 503) when it cannot be written."""
        account = request.get(STAFF_ACCOUNT)
        await access.record(
            AccessEntry(
                at=time.time(),
                account=account.username if isinstance(account, Account) else "",
                ip=request.remote or "",
                action=action,
                **fields,
            )
        )

    async def identify(request: web.Request) -> web.StreamResponse | None:
        """The bearer token's account in request["staff_account"]; an answer when refused."""
        ip = request.remote or ""
        scope = f"token-ip:{ip}"
        if throttle is not None and await throttle.blocked(scope, token_limit, token_window):
            return json_error(429, "too many refused tokens from this address; try again later")
        given = request.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        account = await directory.account_for_token(token) if token else None
        if account is None:
            failures = await throttle.fail(scope, token_window) if throttle is not None else 0
            if failures <= token_limit:  # a flood is throttled, not written to the chain row by row
                await note(request, Action.TOKEN_REFUSED, result="denied", detail="missing" if not token else "unknown")
            return json_error(401, "bearer token required (a personal staff-API token)")
        request[STAFF_ACCOUNT] = account
        return None

    def staff_only(handler: Handler) -> Handler:
        """The person's token, checked per route (a middleware would wrap every request, the
        citizens' webhooks too, in layers of handlers)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            try:
                refused_answer = await identify(request)
                if refused_answer is not None:
                    return refused_answer
                return await handler(request)
            except BadRequest as exc:  # the staff API's bad input: JSON like every other answer
                return refused(malformed, request, exc)
            except StoreUnavailable as exc:
                return error_response(exc)
            except RedisError:
                # A read the route does not wrap (inbox, thread, opt-out status): Redis cannot
                # answer now. 503 (the console retries), never a plain-text 500.
                return error_response(StoreUnavailable("redis unavailable"))

        return checked

    def me(request: web.Request) -> Account:
        return request[STAFF_ACCOUNT]

    async def allowed(request: web.Request, queue: str, *, subject: str = "") -> bool:
        """Whether the person may work `queue`; a refusal is recorded (DENIED)."""
        if me(request).may_see(queue):
            return True
        await note(request, Action.DENIED, subject=subject, target=queue, result="denied", detail=request.path[:200])
        return False

    async def thread_queue(request: web.Request) -> tuple[str, web.Response | None]:
        """The thread's id, and an answer when it does not exist (404) or is not the person's (403)."""
        tid = request.match_info["id"]
        raw = await intake.client.hget(thread_key(tid), "queue")
        if raw is None:
            return tid, json_error(404, "no such thread")
        queue = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not await allowed(request, queue, subject=tid):
            return tid, json_error(403, "this thread's queue is not yours")
        return tid, None

    async def inbox(request: web.Request) -> web.Response:
        try:
            count = min(500, max(1, int(request.query.get("count", "50"))))
        except ValueError:
            return json_error(400, "count must be a number")
        queue = request.match_info["queue"]
        if not await allowed(request, queue):
            return json_error(403, "this queue is not yours")
        found = await intake.inbox(queue, count=count)
        await note(request, Action.VIEW_INBOX, target=queue)
        return web.json_response(found)

    async def thread(request: web.Request) -> web.Response:
        tid, answer = await thread_queue(request)
        if answer is not None:
            return answer
        found = await intake.thread(tid)
        if not found:
            return json_error(404, "no such thread")
        await note(request, Action.VIEW_THREAD, subject=tid, target=str(found.get("queue", "")))
        return web.json_response(found, dumps=_dumps)

    async def body(request: web.Request) -> dict[str, Any]:
        """The JSON object body (none: {}). A ``staff`` field is not needed (the token says who
        acts); when given it must be the token's own user name, never someone else's."""
        data = await _json(request) if request.can_read_body else {}
        staff = data.get("staff")
        if staff is not None and _text(data, "staff") != me(request).username:
            raise BadRequest("staff: the token's person acts; leave the field out (or give your own user name)")
        return data

    async def claim(request: web.Request) -> web.Response:
        """Claim a thread: 200 for the claimer (again: a double click is no error), 404 for no
        such thread, 409 with the holder when someone else has it."""
        await body(request)
        tid, answer = await thread_queue(request)
        if answer is not None:
            return answer
        await note(request, Action.CLAIM, subject=tid)
        try:
            await intake.claim(tid, me(request).username)
        except (ThreadNotFound, ClaimedByOther, StoreUnavailable) as exc:
            return error_response(exc)
        return web.json_response({"claimed": True})

    async def reply(request: web.Request) -> web.Response:
        """Answer a thread: only its claimer may; an unclaimed thread is claimed by the answer.
        202 queued; 200 "duplicate" for the same text posted again by the same person moments later."""
        text = _text(await body(request), "text")
        tid, answer = await thread_queue(request)
        if answer is not None:
            return answer
        await note(request, Action.REPLY, subject=tid, detail=f"{len(text)} chars")
        try:
            result = await intake.reply(tid, text, me(request).username)
        except InboundRejected as exc:  # an empty reply: bad input
            return refused(malformed, request, exc)
        except (ClaimedByOther, ThreadNotFound, OptedOut, StoreUnavailable) as exc:
            return error_response(exc)
        if result == "store_unavailable":  # the guard could not reach Redis: the client retries
            return web.json_response({"result": result, "error": "temporarily unavailable"}, status=503)
        status = 202 if result == "queued" else 200 if result == "duplicate" else 409
        return web.json_response({"result": result}, status=status)

    async def close(request: web.Request) -> web.Response:
        """Close a thread: 200 (again: ``already``), 404 for no such thread."""
        await body(request)
        tid, answer = await thread_queue(request)
        if answer is not None:
            return answer
        await note(request, Action.CLOSE, subject=tid)
        try:
            closed = await intake.close(tid, me(request).username)
        except (ThreadNotFound, StoreUnavailable) as exc:
            return error_response(exc)
        return web.json_response({"closed": True, "already": not closed})

    async def optout(request: web.Request) -> web.Response:
        data = await body(request)
        number = plan.classify(_text(data, "number")).e164
        if not number.startswith("+"):
            return json_error(400, "number is not a phone number")
        action = _text(data, "action")
        if action not in ("add", "remove"):
            return json_error(400, "action must be add or remove")
        subject = number_hash(intake.optouts.hash_key, number)
        await note(request, Action.OPTOUT_CHANGE, subject=subject, detail=action)
        await intake.optouts.set(number, action == "add", channel="admin", via=me(request).username)
        return web.json_response({"opted_out": action == "add"})

    async def optout_status(request: web.Request) -> web.Response:
        number = plan.classify(request.match_info["number"]).e164
        if not number.startswith("+"):
            return json_error(400, "number is not a phone number")
        await note(request, Action.OPTOUT_VIEW, subject=number_hash(intake.optouts.hash_key, number))
        return web.json_response({"opted_out": await intake.optouts.status(number)})

    app.router.add_get("/api/inbox/{queue}", staff_only(inbox))
    app.router.add_get("/api/threads/{id}", staff_only(thread))
    app.router.add_post("/api/threads/{id}/claim", staff_only(claim))
    app.router.add_post("/api/threads/{id}/reply", staff_only(reply))
    app.router.add_post("/api/threads/{id}/close", staff_only(close))
    app.router.add_post("/api/optout", staff_only(optout))
    app.router.add_get("/api/optout/{number}", staff_only(optout_status))


async def _json(request: web.Request) -> dict[str, Any]:
    """The staff API's JSON object body; BadRequest (a JSON 400) otherwise."""
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    except RecursionError:
        raise BadRequest("body must be JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _text(data: Mapping[str, Any], field: str) -> str:
    """A string field of a staff API body ("" when absent); BadRequest naming the field when it
    is not a string of valid Unicode (a lone surrogate cannot be stored or sent)."""
    value = data.get(field)
    if value is None:
        return ""
    problem = text_problem(field, value)
    if problem is not None:
        raise BadRequest(problem)
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
