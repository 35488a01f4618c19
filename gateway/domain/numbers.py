"""Number plan: normalise what the PBX says into E.164 and classify it.

phonenumbers is pure computation (no I/O), so the domain may use it. Korean numbers
arrive as `010-1234-5678`, `01012345678`, `+82 10 1234 5678`, `821012345678` or with an
outside-line prefix (`9,01012345678`, `901012345678`); internally we keep E.164.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gateway.domain.models import NumberKind, PhoneNumber

_SEPARATORS = re.compile(r"[\s\-().,/]")
# 010 + 8 digits: every such number is a Korean mobile number (one prefix since the 2004
# number integration). The hot path of every call to a citizen's mobile skips phonenumbers'
# full parse for it; tests check it agrees with phonenumbers.
_KR_MOBILE = re.compile(r"(?:0|\+?82)(10\d{8})")
_UNKNOWN = {"", "<unknown>", "unknown", "anonymous", "s"}
_SPECIAL_TYPES = {
    PhoneNumberType.VOIP,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.UAN,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.VOICEMAIL,
}


class NumberPlan:
    """How one PBX's numbers look: extension shape and outside-line prefixes."""

    def __init__(
        self,
        *,
        outside_line_prefixes: tuple[str, ...] = ("9",),
        extension_pattern: str = r"^[0-9]{3,5}$",
        region: str = "KR",
    ) -> None:
        # Longest prefix first so "00" is tried before "0" if both are configured.
        self.outside_line_prefixes = tuple(sorted(outside_line_prefixes, key=len, reverse=True))
        self._extension = re.compile(extension_pattern)
        self.region = region
        self._home_cc = phonenumbers.country_code_for_region(region)
        self._cached = lru_cache(maxsize=4096)(self._classify)

    def classify(self, raw: str) -> PhoneNumber:
        """What `raw` is (mobile, landline, extension, ...) and its E.164 form.

        A plain Korean mobile number (the citizen's, in most calls) takes a direct path and is
        not cached: citizens' numbers are not kept in memory past their call, and they do not
        pile up as long-lived objects the garbage collector has to walk (thousands of them made
        its generation-1 passes take ~10 ms at 500 calls/s). Everything else is cached: the
        city's own extensions, trunks and numbers repeat all day."""
        if (
            self._home_cc == 82
            and _KR_MOBILE.fullmatch(raw) is not None
            and not self.is_extension(raw)
            and not raw.startswith(self.outside_line_prefixes)
        ):
            return PhoneNumber(NumberKind.MOBILE, "+82" + raw[-10:], raw)
        return self._cached(raw)

    def is_extension(self, raw: str) -> bool:
        return bool(raw) and self._extension.match(raw) is not None

    def _classify(self, raw: str) -> PhoneNumber:
        text = raw.strip()
        if text.lower() in _UNKNOWN:
            return PhoneNumber(NumberKind.INVALID, "", raw)
        if self.is_extension(text):
            return PhoneNumber(NumberKind.EXTENSION, text, raw)
        digits = _SEPARATORS.sub("", text)
        if not digits or not (digits.isdigit() or (digits[0] == "+" and digits[1:].isdigit())):
            return PhoneNumber(NumberKind.INVALID, "", raw)
        for candidate in self._candidates(digits):
            fast = _KR_MOBILE.fullmatch(candidate) if self._home_cc == 82 else None
            if fast is not None:
                return PhoneNumber(NumberKind.MOBILE, "+82" + fast.group(1), raw)
            number = self._parse(candidate)
            if number is not None:
                return PhoneNumber(self._kind(number), phonenumbers.format_number(number, PhoneNumberFormat.E164), raw)
        return PhoneNumber(NumberKind.INVALID, "", raw)

    def _candidates(self, digits: str) -> list[str]:
        # A PBX outside-line prefix only counts when what follows it looks like a number
        # dialed from outside (national "0..." or international "+"/"00"); the unstripped
        # form is tried last so a real number that starts with the prefix digit still parses.
        out: list[str] = []
        for prefix in self.outside_line_prefixes:
            if digits.startswith(prefix):
                rest = digits[len(prefix) :]
                if rest[:1] in ("0", "+"):
                    out.append(rest)
        out.append(digits)
        return out

    def _parse(self, candidate: str) -> phonenumbers.PhoneNumber | None:
        if candidate.isdigit() and candidate.startswith(str(self._home_cc)) and not candidate.startswith("0"):
            candidate = "+" + candidate  # "821012345678": country code without the plus
        try:
            number = phonenumbers.parse(candidate, self.region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(number):
            return None
        return number

    def _kind(self, number: phonenumbers.PhoneNumber) -> NumberKind:
        if number.country_code != self._home_cc:
            return NumberKind.INTERNATIONAL
        if not phonenumbers.is_valid_number(number):
            return NumberKind.INVALID
        kind = phonenumbers.number_type(number)
        if kind == PhoneNumberType.MOBILE:
            return NumberKind.MOBILE
        if kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
            return NumberKind.LANDLINE
        if kind in _SPECIAL_TYPES:
            return NumberKind.SPECIAL
        return NumberKind.INVALID


@lru_cache(maxsize=16384)
def mask(number: str) -> str:
    """Mask a number for logs: `+821012345678` -> `010-****-5678`.

    Phone numbers are personal data; logs keep only the prefix and the last four digits.
    Extensions (short internal numbers) are not personal and stay as they are.
    """
    if not number:
        return ""
    if len(number) <= 5 and number.isdigit():
        return number
    if number.startswith("+82") and number[3:].isdigit():
        # Fast path without a full parse: this runs on every logged send, at hundreds a second.
        national = "0" + number[3:]
        area = 2 if national.startswith("02") else 3
        last = national[-4:]
        middle = national[area:-4]
        if 3 <= len(middle) <= 4:
            return f"{national[:area]}-{'*' * len(middle)}-{last}"
    try:
        parsed = phonenumbers.parse(number, "KR")
    except phonenumbers.NumberParseException:
        return "*" * max(0, len(number) - 4) + number[-4:]
    if parsed.country_code == 82:
        groups = phonenumbers.format_number(parsed, PhoneNumberFormat.NATIONAL).split("-")
        if len(groups) >= 3:
            return "-".join([groups[0], *("*" * len(g) for g in groups[1:-1]), groups[-1]])
    digits = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
    return digits[:3] + "*" * max(0, len(digits) - 7) + digits[-4:]


def display(e164: str) -> str:
    """The local form shown to staff: `+821012345678` -> `010-1234-5678`."""
    try:
        parsed = phonenumbers.parse(e164, "KR")
    except phonenumbers.NumberParseException:
        return e164
    fmt = PhoneNumberFormat.NATIONAL if parsed.country_code == 82 else PhoneNumberFormat.INTERNATIONAL
    return str(phonenumbers.format_number(parsed, fmt))
