"""Asterisk AMI events -> PBX-neutral leg events.

The only module that knows AMI header names (Uniqueid, Linkedid, DestUniqueid, ...).
`TRACKED_EVENTS` is the set the AMI protocol parses; everything else is discarded
before parsing (VarSet alone is about half of the stream).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.domain.calls import split_channel
from gateway.domain.events import (
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
    LegNew,
    LegShutdown,
    LegsJoined,
    LegUpdate,
    OriginateDone,
)

TRACKED_EVENTS: frozenset[str] = frozenset(
    {
        "Newchannel",
        "Newstate",
        "NewCallerid",
        "DialBegin",
        "DialEnd",
        "BridgeEnter",
        "BridgeLeave",
        "Hangup",
        "BlindTransfer",
        "AttendedTransfer",
        "LocalBridge",
        "Pickup",
        "OriginateResponse",
        "CoreShowChannel",
        "FullyBooted",
        "Shutdown",
        "SoftHangupRequest",
    }
)

#: SoftHangupRequest's `Cause` is Asterisk's soft-hangup reason flag (not a Q.850 cause):
#: AST_SOFTHANGUP_SHUTDOWN, set on every channel by `core stop|restart now`.
SOFTHANGUP_SHUTDOWN = 4


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def leg_info(e: Mapping[str, str], prefix: str = "") -> LegInfo | None:
    leg = e.get(prefix + "Uniqueid", "")
    if not leg or leg == "<unknown>":
        return None
    channel = e.get(prefix + "Channel", "")
    tech, endpoint = split_channel(channel)
    caller = e.get(prefix + "CallerIDNum", "")
    return LegInfo(
        leg=leg,
        group=e.get(prefix + "Linkedid", "") or leg,
        channel=channel,
        tech=tech,
        endpoint=endpoint,
        caller="" if caller == "<unknown>" else caller,
        exten=e.get(prefix + "Exten", ""),
        state=_int(e.get(prefix + "ChannelState")),
    )


def _duration(text: str) -> float:
    """CoreShowChannel `Duration: 00:00:04` -> 4.0."""
    parts = text.split(":")
    try:
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
        return seconds
    except ValueError:
        return 0.0


def _newchannel(e: Mapping[str, str], at: float) -> LegEvent | None:
    info = leg_info(e)
    return LegNew(at, info) if info else None


def _update(e: Mapping[str, str], at: float) -> LegEvent | None:
    info = leg_info(e)
    return LegUpdate(at, info) if info else None


def _dial_begin(e: Mapping[str, str], at: float) -> LegEvent | None:
    dst = leg_info(e, "Dest")
    if dst is None:
        return None
    return DialStart(at, leg_info(e), dst, e.get("DialString", ""))


def _dial_end(e: Mapping[str, str], at: float) -> LegEvent | None:
    dst = e.get("DestUniqueid", "")
    if not dst:
        return None
    return DialStop(at, e.get("Uniqueid") or None, dst, e.get("DialStatus", ""))


def _bridge_enter(e: Mapping[str, str], at: float) -> LegEvent | None:
    leg = e.get("Uniqueid", "")
    return BridgeJoin(at, leg, e.get("BridgeUniqueid", "")) if leg else None


def _bridge_leave(e: Mapping[str, str], at: float) -> LegEvent | None:
    leg = e.get("Uniqueid", "")
    return BridgeExit(at, leg, e.get("BridgeUniqueid", "")) if leg else None


def _hangup(e: Mapping[str, str], at: float) -> LegEvent | None:
    leg = e.get("Uniqueid", "")
    if not leg:
        return None
    tech = e.get("TechCause")
    return LegGone(at, leg, _int(e.get("Cause")), _int(tech) if tech else None)


def _soft_hangup(e: Mapping[str, str], at: float) -> LegEvent | None:
    # Other reasons (a bridge ending, a Hangup action, ...) say nothing the Hangup will not.
    leg = e.get("Uniqueid", "")
    if not leg or _int(e.get("Cause"), -1) != SOFTHANGUP_SHUTDOWN:
        return None
    return LegShutdown(at, leg)


def _blind(e: Mapping[str, str], at: float) -> LegEvent | None:
    if e.get("Result", "Success") != "Success":
        return None
    return BlindTransferred(
        at, e.get("TransfererUniqueid", ""), e.get("TransfereeUniqueid", ""), e.get("Extension", "")
    )


def _attended(e: Mapping[str, str], at: float) -> LegEvent | None:
    if e.get("Result", "Success") != "Success":
        return None
    first = e.get("TransfereeUniqueid") or e.get("OrigTransfererUniqueid", "")
    second = e.get("TransferTargetUniqueid") or e.get("SecondTransfererUniqueid", "")
    if not first or not second:
        return None
    return AttendedTransferred(at, first, second, e.get("TransferTargetUniqueid", ""))


def _local_bridge(e: Mapping[str, str], at: float) -> LegEvent | None:
    a, b = e.get("LocalOneUniqueid", ""), e.get("LocalTwoUniqueid", "")
    return LegsJoined(at, a, b, "local") if a and b else None


def _pickup(e: Mapping[str, str], at: float) -> LegEvent | None:
    picker, target = e.get("Uniqueid", ""), e.get("TargetUniqueid", "")
    return LegsJoined(at, target, picker, "pickup") if picker and target else None


def _originate(e: Mapping[str, str], at: float) -> LegEvent | None:
    leg = e.get("Uniqueid", "")
    return OriginateDone(
        at, e.get("Response") == "Success", "" if leg == "<unknown>" else leg, e.get("Channel", ""), e.get("Exten", "")
    )


def channel_listed(e: Mapping[str, str], at: float) -> ChannelListed | None:
    info = leg_info(e)
    if info is None:
        return None
    return ChannelListed(
        at,
        info,
        e.get("Application", ""),
        e.get("ApplicationData", ""),
        e.get("BridgeId", ""),
        _duration(e.get("Duration", "")),
    )


_MAP: dict[str, Callable[[Mapping[str, str], float], LegEvent | None]] = {
    "Newchannel": _newchannel,
    "Newstate": _update,
    "NewCallerid": _update,
    "DialBegin": _dial_begin,
    "DialEnd": _dial_end,
    "BridgeEnter": _bridge_enter,
    "BridgeLeave": _bridge_leave,
    "Hangup": _hangup,
    "SoftHangupRequest": _soft_hangup,
    "BlindTransfer": _blind,
    "AttendedTransfer": _attended,
    "LocalBridge": _local_bridge,
    "Pickup": _pickup,
    "OriginateResponse": _originate,
    "CoreShowChannel": channel_listed,
}


def to_leg_event(event: Mapping[str, str], at: float) -> LegEvent | None:
    """The leg event for one AMI event, or None if it carries nothing the tracker uses."""
    handler = _MAP.get(event.get("Event", ""))
    return handler(event, at) if handler else None
