"""CallTracker: leg events of one PBX in, call decisions out.

A *call* is everything that happens between a city official and one other party:
several legs (channels) that Asterisk links by `group` (Linkedid) and by Dial. Legs join
calls through Dial and transfers, not by `group` alone, because attended transfers and
Local channels can hand a leg another group mid-call. The tracker is pure and
synchronous: it never does I/O, and it emits

* `ExternalDial` the moment an outbound call starts ringing an outside number (the
  lettering trigger; recovered calls re-emit it and the outbox dedupe absorbs repeats);
* `CallEnded` with a `CallRecord` once every leg of a call has hung up.

Memory stays bounded: finished calls are dropped at once, calls older than
`max_call_age_s` are expired, and only a bounded set of hung-up leg ids is remembered
(so a late resync cannot resurrect them).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from gateway.domain.events import (
    STATE_RING,
    STATE_RINGING,
    STATE_UP,
    AttendedTransferred,
    BlindTransferred,
    BridgeExit,
    BridgeJoin,
    ChannelListed,
    DialStart,
    DialStop,
    LegEvent,
    LegGone,
    LegInfo,
    LegKind,
    LegNew,
    LegShutdown,
    LegsJoined,
    LegUpdate,
    OriginateDone,
)
from gateway.domain.models import (
    CallRecord,
    Direction,
    Disposition,
    NumberKind,
    PhoneNumber,
    Transfer,
)
from gateway.domain.numbers import NumberPlan


@dataclass(frozen=True, slots=True)
class ExternalDial:
    """An outbound call started ringing an outside number."""

    pbx: str
    call_id: str
    at: float
    extension: str  # the official's extension ("" if the call did not start at a phone)
    number: PhoneNumber
    trunk: str
    direction: Direction
    recovered: bool = False  # seen through CoreShowChannels after a reconnect


@dataclass(frozen=True, slots=True)
class CallEnded:
    record: CallRecord
    external_dials: int  # how many ExternalDial outputs this call produced


TrackerOutput = ExternalDial | CallEnded


@dataclass(slots=True)
class _Leg:
    id: str
    call: str
    channel: str
    endpoint: str
    kind: int
    caller: str
    exten: str
    created_at: float
    state: int = 0
    seq: int = 0
    answered_at: float | None = None
    ended_at: float | None = None
    dial_status: str = ""
    cause: int | None = None
    tech_cause: int | None = None
    bridge: str = ""
    talk_since: float | None = None
    talk_total: float = 0.0
    bridged_ever: bool = False
    originated: bool = False


@dataclass(slots=True)
class _Call:
    id: str
    started_at: float
    legs: dict[str, _Leg] = field(default_factory=dict)
    origin: str = ""  # leg id of the phone that started the call (outbound/internal)
    direction: Direction | None = None
    extension: str = ""
    party: PhoneNumber | None = None
    target: str = ""  # leg id whose fate decides the disposition (citizen's leg / callee)
    trunk: str = ""
    answered_at: float | None = None
    transfers: list[Transfer] = field(default_factory=list)
    recovered: bool = False
    originate_exten: str = ""
    end_cause: str = ""  # set when the call is ended by the tracker (restart, expiry, lost)
    dials: int = 0
    # A call dials one number, rarely two: a tuple (the empty one is shared) instead of a set,
    # which costs 216 bytes even when empty.
    dialed_numbers: tuple[str, ...] = ()
    # Groups (Linkedids) other than `id` that point to this call (Local channels, transfers,
    # merges), so that ending a call never scans every live call's groups.
    groups: tuple[str, ...] = ()


_SEQ_SUFFIX = re.compile(r"-[0-9a-fA-F]+(;[12])?$")


@lru_cache(maxsize=2048)  # a channel name comes back in most of its leg's events
def split_channel(channel: str) -> tuple[str, str]:
    """`PJSIP/2001-00000000` -> ("PJSIP", "2001"); `Local/2001@phones-0001;1` -> ("Local", "2001@phones")."""
    tech, _, rest = channel.partition("/")
    if not rest:
        return "", channel
    return tech, _SEQ_SUFFIX.sub("", rest)


def dialed_number(dial_string: str) -> str:
    """The number part of a Dial() argument or AMI `DialString`.

    Handles `01012345678@carrier`, `PJSIP/01012345678@carrier`, `PJSIP/carrier/sip:0101...@host`,
    `SIP/trunk/01012345678` and options after a comma.
    """
    text = dial_string.split(",", 1)[0].split("&", 1)[0].strip()
    if "/" in text and text.split("/", 1)[0].isalpha() and text.split("/", 1)[0][:1].isupper():
        text = text.split("/", 1)[1]  # drop the technology
    if "/" in text:
        text = text.rsplit("/", 1)[1]  # endpoint/number or endpoint/sip:uri
    if text.startswith(("sip:", "sips:", "tel:")):
        text = text.split(":", 1)[1]
    return text.split("@", 1)[0].split(";", 1)[0]


class CallTracker:
    """Tracks the calls of one PBX. Feed it `LegEvent`s in the order they arrived."""

    def __init__(
        self,
        pbx: str,
        plan: NumberPlan,
        trunks: tuple[str, ...],
        *,
        max_call_age_s: float = 12 * 3600,
        tombstones: int = 8192,
    ) -> None:
        self.pbx = pbx
        self.plan = plan
        self._trunk_patterns = tuple(trunks)
        self._kind_cache: dict[tuple[str, str], int] = {}
        self.max_call_age_s = max_call_age_s
        self._calls: dict[str, _Call] = {}
        self._legs: dict[str, _Leg] = {}
        self._groups: dict[str, str] = {}  # group (Linkedid) -> call id
        self._bridges: dict[str, list[str]] = {}  # bridge id -> legs in it (two, in a call)
        self._gone: OrderedDict[str, None] = OrderedDict()
        # Ids (and groups) of calls already reported: a late or reordered leg of one of them must
        # not open a second call under the same id (it would be reported twice).
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._tombstones = tombstones
        self._seq = 0
        self._resync_mark: int | None = None
        # When the connection to the PBX was lost (PBX clock), until the next resync: calls that
        # turn out to be gone ended no later than that, however long the PBX took to come back.
        self._lost_at: float | None = None

    # ----------------------------------------------------------------- queries
    @property
    def live_calls(self) -> int:
        return len(self._calls)

    @property
    def live_legs(self) -> int:
        return len(self._legs)

    def call_of_leg(self, leg: str) -> str | None:
        entry = self._legs.get(leg)
        return entry.call if entry else None

    def ringing(self, call_id: str) -> bool:
        """The call is live and nobody answered yet (a lettering can still be seen)."""
        call = self._calls.get(call_id)
        return call is not None and call.answered_at is None

    # ------------------------------------------------------------------ events
    def handle(self, event: LegEvent) -> list[TrackerOutput]:
        """Apply one event; return what it decided (often nothing)."""
        out: list[TrackerOutput] = []
        if isinstance(event, LegNew):
            self._leg(event.info, event.at)
        elif isinstance(event, LegUpdate):
            self._on_update(event)
        elif isinstance(event, DialStart):
            self._on_dial_start(event, out)
        elif isinstance(event, DialStop):
            self._on_dial_stop(event)
        elif isinstance(event, BridgeJoin):
            self._on_bridge_join(event)
        elif isinstance(event, BridgeExit):
            self._on_bridge_exit(event.leg, event.bridge, event.at)
        elif isinstance(event, LegGone):
            self._on_gone(event.leg, event.at, event.cause, event.tech_cause, out)
        elif isinstance(event, LegShutdown):
            leg = self._legs.get(event.leg)
            if leg is not None:
                self._call_end_cause(leg.call, "pbx_restart")
        elif isinstance(event, BlindTransferred):
            self._on_blind_transfer(event)
        elif isinstance(event, AttendedTransferred):
            self._on_attended_transfer(event)
        elif isinstance(event, LegsJoined):
            self._on_joined(event)
        elif isinstance(event, OriginateDone):
            self._on_originate(event)
        elif isinstance(event, ChannelListed):
            self._on_listed(event, out)
        return out

    def connection_lost(self, at: float) -> None:
        """The connection to the PBX ended at `at`; nothing is known about its calls from then on."""
        if self._lost_at is None:
            self._lost_at = at

    def _gone_since(self, at: float) -> float:
        """When calls found gone at `at` ended at the latest: the loss of the connection, if any."""
        return at if self._lost_at is None else min(at, self._lost_at)

    def resync_started(self) -> None:
        """Mark the point after which events are newer than the coming channel list."""
        self._resync_mark = self._seq

    def resynced(self, at: float, channels: list[ChannelListed]) -> list[TrackerOutput]:
        """Reconcile with the PBX's list of live channels after a (re)connect.

        Legs known before the resync began, untouched since and missing from the list hung
        up while we were away (they are ended at the moment the connection was lost: the last
        moment they were known to be up); listed legs we do not know are rebuilt (`recovered`).
        """
        out: list[TrackerOutput] = []
        mark = self._resync_mark if self._resync_mark is not None else self._seq
        self._resync_mark = None
        gone_at = self._gone_since(at)
        self._lost_at = None
        listed = {c.info.leg for c in channels}
        for leg in [lg for lg in self._legs.values() if lg.seq <= mark and lg.id not in listed]:
            self._call_end_cause(leg.call, "lost_while_disconnected")
            self._on_gone(leg.id, max(gone_at, leg.created_at), None, None, out)
        for item in self._order_for_recovery(channels):
            self._on_listed(item, out)
        return out

    def pbx_restarted(self, at: float) -> list[TrackerOutput]:
        """Asterisk restarted (noticed at `at`): every call it had is gone, since the connection
        was lost if it was (a PBX killed mid-call takes its calls down with the connection)."""
        out: list[TrackerOutput] = []
        gone_at = self._gone_since(at)
        for leg in list(self._legs.values()):
            self._call_end_cause(leg.call, "pbx_restart")
            self._on_gone(leg.id, max(gone_at, leg.created_at), None, None, out)
        self._bridges.clear()
        return out

    def expire(self, now: float) -> list[TrackerOutput]:
        """End calls older than `max_call_age_s` (their hangup was never seen)."""
        out: list[TrackerOutput] = []
        for call in [c for c in self._calls.values() if now - c.started_at > self.max_call_age_s]:
            call.end_cause = call.end_cause or "expired"
            for leg in list(call.legs.values()):
                self._on_gone(leg.id, now, None, None, out)
        return out

    # --------------------------------------------------------------- internals
    def _kind(self, tech: str, endpoint: str) -> int:
        key = (tech, endpoint)
        kind = self._kind_cache.get(key)
        if kind is None:
            if tech.lower() == "local":
                kind = LegKind.OTHER
            elif any(fnmatch.fnmatchcase(endpoint, p) for p in self._trunk_patterns):
                kind = LegKind.TRUNK
            else:
                kind = LegKind.PHONE
            if len(self._kind_cache) < 65536:
                self._kind_cache[key] = kind
        return kind

    def _touch(self, leg: _Leg) -> None:
        self._seq += 1
        leg.seq = self._seq

    def _leg(self, info: LegInfo, at: float, call_id: str | None = None) -> _Leg | None:
        """The leg for `info`, created (and attached to a call) when new."""
        leg = self._legs.get(info.leg)
        if leg is not None:
            if info.caller and info.caller != "<unknown>":
                leg.caller = info.caller if leg.kind == LegKind.TRUNK else sys.intern(info.caller)
            self._touch(leg)
            return leg
        if info.leg in self._gone:
            return None  # a late event about a leg that already hung up
        if call_id is None:
            call_id = self._groups.get(info.group) or self._groups.get(info.leg)
        call = self._calls.get(call_id) if call_id else None
        if call is None and (info.group or info.leg) in self._ended:
            return None  # a late leg of a call already reported
        if call is None:
            # The first leg's Linkedid equals its Uniqueid: share that string, not a copy.
            call = _Call(id=info.leg if info.group in ("", info.leg) else info.group, started_at=at)
            if call.id in self._calls:  # group id reused by a merged call: keep ids unique
                call.id = info.leg
            self._calls[call.id] = call
        kind = self._kind(info.tech, info.endpoint)
        caller = "" if info.caller == "<unknown>" else info.caller
        # Endpoints (phones, trunks) and the callers of phone legs (extensions) repeat across
        # calls: interned, thousands of concurrent calls share one string each. A trunk leg's
        # caller is a citizen's number, different on every call: not interned.
        leg = _Leg(
            id=info.leg,
            call=call.id,
            channel=info.channel,
            endpoint=sys.intern(info.endpoint),
            kind=kind,
            caller=caller if kind == LegKind.TRUNK else sys.intern(caller),
            exten=info.exten,
            created_at=at,
            state=info.state,
        )
        self._legs[leg.id] = leg
        call.legs[leg.id] = leg
        if info.group:
            group = call.id if info.group == call.id else info.group
            if self._groups.setdefault(group, call.id) == call.id and group != call.id and group not in call.groups:
                call.groups += (group,)
        self._touch(leg)
        if len(call.legs) == 1:
            self._first_leg(call, leg)
        return leg

    def _first_leg(self, call: _Call, leg: _Leg) -> None:
        if leg.kind == LegKind.TRUNK:
            call.direction = Direction.INBOUND
            call.target = leg.id
            call.trunk = leg.endpoint
            call.party = self.plan.classify(leg.caller) if leg.caller else None
        elif leg.kind == LegKind.PHONE:
            call.origin = leg.id

    def _extension_of(self, leg: _Leg) -> str:
        if self.plan.is_extension(leg.endpoint):
            return leg.endpoint
        if self.plan.is_extension(leg.caller):
            return leg.caller
        return leg.endpoint

    def _on_update(self, event: LegUpdate) -> None:
        leg = self._leg(event.info, event.at)
        if leg is None:
            return
        leg.state = event.info.state
        call = self._calls[leg.call]
        if call.direction is Direction.INBOUND and leg.id == call.target and call.party is None and leg.caller:
            call.party = self.plan.classify(leg.caller)

    def _move(self, leg: _Leg, call: _Call) -> None:
        """Attach `leg` to `call` (Dial or transfer brought it there)."""
        if leg.call == call.id:
            return
        old = self._calls.get(leg.call)
        if old is not None:
            old.legs.pop(leg.id, None)
            if not old.legs:
                self._drop_call(old)
        leg.call = call.id
        call.legs[leg.id] = leg

    def _on_dial_start(self, event: DialStart, out: list[TrackerOutput]) -> None:
        src = self._leg(event.src, event.at) if event.src is not None else None
        dst = self._leg(event.dst, event.at, src.call if src else None)
        if dst is None:
            return
        if src is not None:
            self._move(dst, self._calls[src.call])
        call = self._calls[dst.call]
        if src is None:
            # The PBX rings a phone by itself (Originate, click-to-call): that phone is the caller.
            dst.originated = True
            if not call.origin and dst.kind == LegKind.PHONE:
                call.origin = dst.id
            return
        if dst.kind == LegKind.TRUNK:
            self._external_dial(call, src, dst, event, out)
        elif dst.kind == LegKind.PHONE:
            self._phone_dial(call, src, dst, event)

    def _external_dial(self, call: _Call, src: _Leg, dst: _Leg, event: DialStart, out: list[TrackerOutput]) -> None:
        raw = dialed_number(event.dial_string) or event.dst.exten or src.exten
        number = self.plan.classify(raw)
        if number.kind in (NumberKind.INVALID, NumberKind.EXTENSION) and event.dst.exten not in ("", "s"):
            alt = self.plan.classify(event.dst.exten)
            if alt.kind not in (NumberKind.INVALID, NumberKind.EXTENSION):
                number = alt
        if call.direction is Direction.INBOUND:
            # A citizen's call forwarded outside: not lettered, remembered as a transfer.
            _note(call.transfers, Transfer("forward", event.at, number.e164 or raw))
            return
        previous = self._legs.get(call.target) if call.target else None
        if (
            call.direction is Direction.OUTBOUND
            and previous is not None
            and previous.answered_at is not None
            and previous.ended_at is None
        ):
            # The citizen is still on the line and another outside number joins: a transfer/conference.
            _note(call.transfers, Transfer("forward", event.at, number.e164 or raw))
            return
        call.direction = Direction.OUTBOUND
        call.target = dst.id
        call.trunk = dst.endpoint
        call.party = number
        origin = self._legs.get(call.origin) if call.origin else None
        call.extension = self._extension_of(origin) if origin else ""
        key = number.e164 or raw
        if key in call.dialed_numbers:
            return
        call.dialed_numbers += (key,)
        call.dials += 1
        out.append(
            ExternalDial(
                self.pbx, call.id, event.at, call.extension, number, dst.endpoint, Direction.OUTBOUND, call.recovered
            )
        )

    def _phone_dial(self, call: _Call, src: _Leg, dst: _Leg, event: DialStart) -> None:
        if call.direction is Direction.INBOUND:
            return  # ringing officials for a citizen; the one who answers is decided at DialStop
        if call.direction is Direction.OUTBOUND and call.target and src.id == call.target:
            # The citizen's leg dials a phone: a redirect/transfer (a BlindTransfer event may
            # have announced it already).
            ext = self._extension_of(dst)
            if not (call.transfers and call.transfers[-1].to == ext and event.at - call.transfers[-1].at < 30):
                _note(call.transfers, Transfer("redirect", event.at, ext))
            return
        if call.direction is None:
            call.direction = Direction.INTERNAL
            call.target = dst.id
            call.party = PhoneNumber(NumberKind.EXTENSION, self._extension_of(dst), dst.endpoint)
            origin = self._legs.get(call.origin) if call.origin else None
            call.extension = self._extension_of(origin) if origin else self._extension_of(src)

    def _on_dial_stop(self, event: DialStop) -> None:
        dst = self._legs.get(event.dst)
        if dst is None:
            return
        self._touch(dst)
        status = event.status.upper()
        if event.src is None and dst.originated:
            return  # the desk phone answered (or not) its own click-to-call
        dst.dial_status = sys.intern(status)  # a handful of values, one string each
        call = self._calls[dst.call]
        if status != "ANSWER":
            return
        dst.answered_at = event.at
        if dst.id == call.target and call.answered_at is None:
            call.answered_at = event.at
        if call.direction is Direction.INBOUND and dst.kind == LegKind.PHONE:
            call.extension = self._extension_of(dst)
            if call.answered_at is None:
                call.answered_at = event.at

    def _on_bridge_join(self, event: BridgeJoin) -> None:
        leg = self._legs.get(event.leg)
        if leg is None:
            return
        self._touch(leg)
        if leg.bridge and leg.bridge != event.bridge:
            self._on_bridge_exit(leg.id, leg.bridge, event.at)
        bridge = sys.intern(event.bridge)  # one string for the bridge's legs and the table
        members = self._bridges.setdefault(bridge, [])
        if leg.id not in members:
            members.append(leg.id)
        leg.bridge = bridge
        leg.bridged_ever = True
        if len(members) >= 2:
            for member_id in members:
                member = self._legs.get(member_id)
                if member is not None and member.talk_since is None:
                    member.talk_since = event.at
                    call = self._calls.get(member.call)
                    if call and member.id == call.target and call.answered_at is None:
                        call.answered_at = event.at

    def _on_bridge_exit(self, leg_id: str, bridge: str, at: float) -> None:
        members = self._bridges.get(bridge)
        if members is not None and leg_id in members:
            members.remove(leg_id)
        leg = self._legs.get(leg_id)
        if leg is not None:
            self._touch(leg)
            self._stop_talk(leg, at)
            if leg.bridge == bridge:
                leg.bridge = ""
        if members is not None and len(members) < 2:
            for member_id in members:
                member = self._legs.get(member_id)
                if member is not None:
                    self._stop_talk(member, at)
            if not members:
                del self._bridges[bridge]

    @staticmethod
    def _stop_talk(leg: _Leg, at: float) -> None:
        if leg.talk_since is not None:
            leg.talk_total += max(0.0, at - leg.talk_since)
            leg.talk_since = None

    def _on_blind_transfer(self, event: BlindTransferred) -> None:
        leg = self._legs.get(event.transferee) or self._legs.get(event.transferer)
        if leg is None:
            return
        self._touch(leg)
        _note(self._calls[leg.call].transfers, Transfer("blind", event.at, event.exten))

    def _merge(self, keep: _Call, other: _Call) -> None:
        if keep is other:
            return
        # Re-point the consultation call's groups first: moving its last leg drops it.
        for group in (other.id, *other.groups):
            if self._groups.get(group) == other.id:
                self._groups[group] = keep.id
                if group != keep.id and group not in keep.groups:
                    keep.groups += (group,)
        for leg in list(other.legs.values()):
            self._move(leg, keep)
        if keep.target == "" and other.target:
            keep.direction, keep.target, keep.party = other.direction, other.target, other.party
            keep.trunk, keep.answered_at = other.trunk, other.answered_at
        keep.transfers.extend(other.transfers)
        keep.dialed_numbers += tuple(n for n in other.dialed_numbers if n not in keep.dialed_numbers)
        keep.dials += other.dials
        self._calls.pop(other.id, None)

    def _on_attended_transfer(self, event: AttendedTransferred) -> None:
        first = self._legs.get(event.first)
        second = self._legs.get(event.second)
        if first is None or second is None:
            return
        keep, other = self._calls[first.call], self._calls[second.call]
        target = self._legs.get(event.target) if event.target else None
        to = self._extension_of(target) if target else (other.party.e164 if other.party else "")
        # The call with the citizen survives the transfer; the consultation call folds into it.
        if keep.target == "" and other.target:
            keep, other = other, keep
        self._merge(keep, other)
        _note(keep.transfers, Transfer("attended", event.at, to))

    def _on_joined(self, event: LegsJoined) -> None:
        a, b = self._legs.get(event.a), self._legs.get(event.b)
        if a is None or b is None:
            return
        keep, other = self._calls[a.call], self._calls[b.call]
        if keep.target == "" and other.target:
            keep, other = other, keep
        self._merge(keep, other)
        if event.kind == "pickup":
            picker = self._legs[event.b]
            _note(keep.transfers, Transfer("pickup", event.at, self._extension_of(picker)))
            if keep.direction is Direction.INBOUND and picker.kind == LegKind.PHONE:
                keep.extension = self._extension_of(picker)

    def _on_originate(self, event: OriginateDone) -> None:
        leg = self._legs.get(event.leg) if event.leg else None
        if leg is None:
            prefix = event.channel + "-"
            leg = next(
                (
                    lg
                    for lg in self._legs.values()
                    if lg.originated and (lg.channel == event.channel or lg.channel.startswith(prefix))
                ),
                None,
            )
        if leg is not None:
            self._calls[leg.call].originate_exten = event.exten

    def _on_listed(self, item: ChannelListed, out: list[TrackerOutput]) -> None:
        known = item.info.leg in self._legs
        leg = self._leg(item.info, item.at - item.age_s)
        if leg is None:
            return
        leg.state = item.info.state
        if known:
            return
        call = self._calls[leg.call]
        call.recovered = True
        call.started_at = min(call.started_at, leg.created_at)
        if leg.kind == LegKind.PHONE and item.application == "Dial" and item.app_data:
            call.origin = call.origin or leg.id
            call.originate_exten = call.originate_exten or dialed_number(item.app_data)
        if leg.kind == LegKind.TRUNK and call.direction is None and call.origin:
            # Rebuild the outbound dial this trunk leg belongs to.
            origin = self._legs[call.origin]
            raw = call.originate_exten or leg.exten or leg.caller
            number = self.plan.classify(raw)
            call.direction, call.target, call.trunk, call.party = Direction.OUTBOUND, leg.id, leg.endpoint, number
            call.extension = self._extension_of(origin)
            if leg.state == STATE_UP:
                leg.answered_at = call.answered_at = leg.created_at
            elif leg.state in (STATE_RING, STATE_RINGING) or item.application == "AppDial":
                key = number.e164 or raw
                if key not in call.dialed_numbers:
                    call.dialed_numbers += (key,)
                    call.dials += 1
                    out.append(
                        ExternalDial(
                            self.pbx, call.id, item.at, call.extension, number, leg.endpoint, Direction.OUTBOUND, True
                        )
                    )
        if item.bridge:
            self._on_bridge_join(
                BridgeJoin(item.at - item.age_s if leg.state == STATE_UP else item.at, leg.id, item.bridge)
            )

    @staticmethod
    def _order_for_recovery(channels: list[ChannelListed]) -> list[ChannelListed]:
        # The oldest leg of each group first, so the call is rebuilt from its origin.
        return sorted(channels, key=lambda c: (c.info.group, c.info.leg != c.info.group, -c.age_s))

    def _call_end_cause(self, call_id: str, cause: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.end_cause:
            call.end_cause = cause

    def _on_gone(
        self, leg_id: str, at: float, cause: int | None, tech_cause: int | None, out: list[TrackerOutput]
    ) -> None:
        leg = self._legs.pop(leg_id, None)
        if leg is None:
            return
        self._gone[leg_id] = None
        if len(self._gone) > self._tombstones:
            self._gone.popitem(last=False)
        if leg.bridge:
            self._on_bridge_exit(leg.id, leg.bridge, at)
        self._stop_talk(leg, at)
        leg.ended_at = at
        leg.cause = cause
        leg.tech_cause = tech_cause
        call = self._calls.get(leg.call)
        if call is None:
            return
        if all(lg.ended_at is not None for lg in call.legs.values()):
            out.append(CallEnded(self._record(call, at), call.dials))
            for ended in (call.id, *(g for g in call.groups if self._groups.get(g) == call.id)):
                self._ended[ended] = None
            while len(self._ended) > self._tombstones:
                self._ended.popitem(last=False)
            self._drop_call(call)

    def _drop_call(self, call: _Call) -> None:
        self._calls.pop(call.id, None)
        for leg_id in call.legs:
            self._legs.pop(leg_id, None)
        for group in (call.id, *call.groups):
            if self._groups.get(group) == call.id:
                del self._groups[group]

    # ----------------------------------------------------------------- records
    def _record(self, call: _Call, at: float) -> CallRecord:
        target = call.legs.get(call.target) if call.target else None
        origin = call.legs.get(call.origin) if call.origin else None
        direction = call.direction
        party = call.party
        extension = call.extension
        if direction is None:
            # Nobody was dialed: a click-to-call whose desk phone never answered, or a phone
            # that gave up in the dialplan.
            wanted = self.plan.classify(call.originate_exten) if call.originate_exten else None
            external = wanted is not None and wanted.kind not in (NumberKind.EXTENSION, NumberKind.INVALID)
            direction = Direction.OUTBOUND if external else Direction.INTERNAL
            party = wanted
            extension = self._extension_of(origin) if origin else ""
        disposition, cause = self._disposition(call, target, origin)
        if (call.end_cause and disposition is not Disposition.ANSWERED) or call.end_cause:
            cause = call.end_cause
        talk = 0.0
        if target is not None and call.answered_at is not None:
            # Bridged time is what the citizen really talked; without bridge events
            # (filtered in manager.conf) fall back to answer -> hangup.
            talk = target.talk_total if target.bridged_ever else max(0.0, (target.ended_at or at) - call.answered_at)
        ended = max((lg.ended_at or at) for lg in call.legs.values()) if call.legs else at
        return CallRecord(
            pbx=self.pbx,
            call_id=call.id,
            direction=direction,
            extension=extension,
            party=(party.e164 or party.raw) if party else "",
            party_kind=party.kind if party else NumberKind.INVALID,
            disposition=disposition,
            cause=cause,
            started_at=call.started_at,
            answered_at=call.answered_at,
            ended_at=ended,
            talk_seconds=round(talk, 3),
            trunk=call.trunk,
            transfers=tuple(call.transfers),
            recovered=call.recovered,
        )

    def _disposition(self, call: _Call, target: _Leg | None, origin: _Leg | None) -> tuple[Disposition, str]:
        if call.answered_at is not None:
            return Disposition.ANSWERED, "transferred" if call.transfers else "normal"
        if call.direction is Direction.INBOUND:
            statuses = {lg.dial_status for lg in call.legs.values() if lg.kind != LegKind.TRUNK}
            if not statuses - {""}:
                return Disposition.CANCELLED, "abandoned"
            if "NOANSWER" in statuses:
                return Disposition.NO_ANSWER, "timeout"
            if "BUSY" in statuses:
                return Disposition.BUSY, "busy"
            return Disposition.CANCELLED, "abandoned"
        if target is None:
            if origin is not None and origin.originated:
                return Disposition.NO_ANSWER, "caller_phone_not_answered"
            return Disposition.FAILED, "not_dialed"
        return _from_status(target.dial_status, target.cause, target.tech_cause)


def _note(transfers: list[Transfer], transfer: Transfer) -> None:
    """Append `transfer` unless it repeats the last one (the same event delivered twice)."""
    if not transfers or transfers[-1] != transfer:
        transfers.append(transfer)


_Q850 = {
    1: (Disposition.FAILED, "invalid_number"),
    3: (Disposition.FAILED, "no_route"),
    17: (Disposition.BUSY, "busy"),
    18: (Disposition.NO_ANSWER, "timeout"),
    19: (Disposition.NO_ANSWER, "timeout"),
    20: (Disposition.FAILED, "subscriber_absent"),
    21: (Disposition.NO_ANSWER, "rejected"),
    22: (Disposition.FAILED, "number_changed"),
    27: (Disposition.FAILED, "destination_out_of_order"),
    28: (Disposition.FAILED, "invalid_number"),
    34: (Disposition.CONGESTION, "congestion"),
    38: (Disposition.CONGESTION, "network_out_of_order"),
    41: (Disposition.CONGESTION, "temporary_failure"),
    42: (Disposition.CONGESTION, "congestion"),
}


def _from_status(status: str, cause: int | None, tech_cause: int | None) -> tuple[Disposition, str]:
    """Disposition of a dialed leg from DialEnd's DialStatus, refined by the hangup cause.

    Asterisk reports SIP 603 (declined) and 404 as NOANSWER in DialEnd; the Q.850 cause of
    the leg's Hangup (21, 1) tells them apart from a plain ring timeout.
    """
    if status == "BUSY":
        return Disposition.BUSY, "busy"
    if status == "CANCEL":
        return Disposition.CANCELLED, "caller_cancelled"
    if status == "CONGESTION":
        return Disposition.CONGESTION, "congestion"
    if status == "CHANUNAVAIL":
        return _Q850.get(cause or 0, (Disposition.FAILED, "unavailable"))
    if status == "NOANSWER":
        if cause in _Q850 and cause not in (18, 19):
            return _Q850[cause]
        return Disposition.NO_ANSWER, "timeout"
    if cause in _Q850:
        return _Q850[cause]
    if tech_cause == 486:
        return Disposition.BUSY, "busy"
    return Disposition.CANCELLED, "hangup_before_answer"
