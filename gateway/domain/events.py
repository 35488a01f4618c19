"""PBX-neutral leg events: what the AMI edge translates Asterisk events into.

`leg` is a channel's unique id and `group` the id it shares with the other channels of
its call (Asterisk's Uniqueid and Linkedid); only the AMI edge knows those names.
"""

from __future__ import annotations

from dataclasses import dataclass

# Asterisk channel states worth naming (ast_channel_state).
STATE_DOWN = 0
STATE_RING = 4
STATE_RINGING = 5
STATE_UP = 6


class LegKind:
    PHONE = 0  # a desk phone (or softphone) endpoint
    TRUNK = 1  # a carrier trunk: the other end is outside the city
    OTHER = 2  # Local channels and other plumbing


@dataclass(frozen=True, slots=True)
class LegInfo:
    """A snapshot of one channel's identity, as carried by most channel events."""

    leg: str
    group: str
    channel: str
    tech: str  # "PJSIP", "SIP", "Local", ...
    endpoint: str  # channel name without tech and sequence: "2001", "carrier", "2001@phones"
    caller: str  # CallerIDNum ("" when unknown)
    exten: str
    state: int


@dataclass(frozen=True, slots=True)
class LegNew:
    at: float
    info: LegInfo


@dataclass(frozen=True, slots=True)
class LegUpdate:
    """Newstate / NewCallerid: the channel's state or caller number changed."""

    at: float
    info: LegInfo


@dataclass(frozen=True, slots=True)
class DialStart:
    at: float
    src: LegInfo | None  # None when the PBX dials a phone on its own (Originate)
    dst: LegInfo
    dial_string: str


@dataclass(frozen=True, slots=True)
class DialStop:
    at: float
    src: str | None
    dst: str
    status: str  # ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION, CHANUNAVAIL, ...


@dataclass(frozen=True, slots=True)
class BridgeJoin:
    at: float
    leg: str
    bridge: str


@dataclass(frozen=True, slots=True)
class BridgeExit:
    at: float
    leg: str
    bridge: str


@dataclass(frozen=True, slots=True)
class LegGone:
    at: float
    leg: str
    cause: int  # Q.850
    tech_cause: int | None = None  # e.g. SIP response code


@dataclass(frozen=True, slots=True)
class LegShutdown:
    """The PBX itself is hanging this leg up because it is shutting down or restarting.

    It comes before the leg's `LegGone`, whose cause then reads like a normal hangup."""

    at: float
    leg: str


@dataclass(frozen=True, slots=True)
class BlindTransferred:
    at: float
    transferer: str
    transferee: str
    exten: str


@dataclass(frozen=True, slots=True)
class AttendedTransferred:
    at: float
    first: str  # a leg of the call being transferred (original transferer or transferee)
    second: str  # a leg of the consultation call
    target: str  # a leg of the transfer target, "" when unknown


@dataclass(frozen=True, slots=True)
class LegsJoined:
    """Two legs belong to one call (Local channel halves, call pickup)."""

    at: float
    a: str
    b: str
    kind: str  # "local", "pickup"


@dataclass(frozen=True, slots=True)
class OriginateDone:
    at: float
    success: bool
    leg: str  # "" when Asterisk did not create a channel
    channel: str  # channel name, or the dial string ("PJSIP/2006") on failure
    exten: str  # where the originated channel was to be sent


@dataclass(frozen=True, slots=True)
class ChannelListed:
    """One live channel as listed by CoreShowChannels."""

    at: float
    info: LegInfo
    application: str
    app_data: str
    bridge: str
    age_s: float


LegEvent = (
    LegNew
    | LegUpdate
    | DialStart
    | DialStop
    | BridgeJoin
    | BridgeExit
    | LegGone
    | LegShutdown
    | BlindTransferred
    | AttendedTransferred
    | LegsJoined
    | OriginateDone
    | ChannelListed
)
