"""Civic telephony and messaging gateway."""

__version__ = "0.1.0"
