"""Lettering policy as the telecom team wrote it in ``rules/lettering.yaml``, already validated.

Pure domain code: plain values plus the two decisions that only need the rules themselves
(which carrier handles a call, and what text it shows).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain.directory import Directory
from gateway.domain.models import Direction, NumberKind

# Everything a lettering template may use; the lettering policy fills all of them for every call.
TEMPLATE_VARIABLES = frozenset({"organisation", "department", "department_id", "guide", "extension", "caller_number"})


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """Calls from ``pbx`` over ``trunk`` go to ``provider``; None matches any PBX / trunk."""

    provider: str
    pbx: str | None = None
    trunk: str | None = None

    def matches(self, pbx: str, trunk: str) -> bool:
        """True when this route applies to a call on ``pbx`` over ``trunk``."""
        return (self.pbx is None or self.pbx == pbx) and (self.trunk is None or self.trunk == trunk)


class _Blank(dict[str, str]):
    """Variables for `str.format_map`: a variable the caller did not fill renders as ""."""

    def __missing__(self, key: str) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class LetteringRules:
    """Who gets lettering, through which carrier, with which text."""

    enabled: bool = True
    directions: frozenset[Direction] = frozenset({Direction.OUTBOUND})
    number_kinds: frozenset[NumberKind] = frozenset({NumberKind.MOBILE})
    outside_line_prefixes: tuple[str, ...] = ("9",)
    extension_pattern: str = r"^[0-9]{3,5}$"  # what a desk extension looks like
    providers: tuple[ProviderRoute, ...] = (ProviderRoute("sandbox"),)  # first match wins
    template: str = "{guide}"
    max_text_chars: int = 40
    rate_limit_count: int = 10  # max letterings per citizen number ...
    rate_limit_window_s: int = 3600  # ... per window

    def provider_for(self, pbx: str, trunk: str) -> str:
        """The provider of the first route matching the call; `LookupError` when none does."""
        for route in self.providers:
            if route.matches(pbx, trunk):
                return route.provider
        raise LookupError(f"no lettering provider route for pbx {pbx!r}, trunk {trunk!r}")

    def render(self, variables: Mapping[str, str]) -> str:
        """The lettering text: the template filled in, cut to ``max_text_chars`` characters.

        Runs of whitespace collapse to one space because carriers show a single line, and an empty
        variable (a department without a caller number) must not leave a double space behind.
        The cut is on a character (Korean syllables are single code points) and appends nothing:
        an ellipsis would only eat one of the few characters the carrier shows.
        """
        text = " ".join(self.template.format_map(_Blank(variables)).split())
        return text[: self.max_text_chars].rstrip()


def template_problems(template: str, variables: frozenset[str] = TEMPLATE_VARIABLES) -> list[str]:
    """Human messages for everything wrong with a text template ([] when it is fine).

    Lettering texts use `TEMPLATE_VARIABLES`; other templates (SMS auto-replies) pass their own.
    Only plain named fields of `variables` are allowed: attribute or index access
    (``{guide.__class__}``) and positional fields (``{}``, ``{0}``) are refused, because the
    template comes from a file and is rendered with `str.format_map`.
    """
    problems: list[str] = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"bad template syntax: {exc} (write {{{{ and }}}} for literal braces)"]
    for _literal, field, spec, _conversion in fields:
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if field == "" or field.isdigit():
            problems.append(f"positional field {{{field}}} is not allowed; use a variable name")
        elif name not in variables:
            known = ", ".join(sorted(variables))
            problems.append(f"unknown template variable {{{name}}} (known: {known})")
        elif field != name:
            problems.append(f"{{{field}}}: only plain variables are allowed, like {{{name}}}")
        elif spec and "{" in spec:
            problems.append(f"{{{field}:{spec}}}: nested fields in a format spec are not allowed")
    if not problems:
        # Format specs are only checked when applied ("{guide:d}" fails on a string).
        try:
            template.format_map({name: "x" for name in variables})
        except (ValueError, TypeError) as exc:
            problems.append(f"bad template format: {exc}")
    return problems


@dataclass(frozen=True, slots=True)
class Rules:
    """One consistent, validated set of rules; swapped as a whole on reload."""

    directory: Directory
    lettering: LetteringRules
    version: str  # first 12 hex digits of the sha256 of the rule files: shows which rules decided
    source: str  # where the rules were loaded from (the rules directory, as given)
