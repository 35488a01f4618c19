"""The AMI edge: a UTF-8-safe, prefiltering protocol and a supervised client per PBX."""

from gateway.calls.pbx.client import AmiSettings, PbxClient
from gateway.calls.pbx.protocol import CLIENT_EVENTS, AmiCounters, AmiProtocol

__all__ = ["CLIENT_EVENTS", "AmiCounters", "AmiProtocol", "AmiSettings", "PbxClient"]
