"""SMS/LMS text: make it EUC-KR-safe, measure it in bytes, choose SMS or LMS.

Korean carriers take SMS text in EUC-KR (KS X 1001): an SMS carries 90 bytes, an LMS
2,000 bytes; ASCII costs 1 byte, Hangul and every other KS X 1001 character 2 bytes.
NHN Cloud's SMS guide (v3.0, "주의 사항") says delivery is encoded as EUC-KR and fails for
unsupported characters such as emoji (API code -2023); Solapi answers 1029. So text is
made safe here, before it reaches any adapter, and nothing is left for the provider to
reject or truncate.

Decisions (pure stdlib, never raises):

- The text is normalised to NFC first, and CRLF becomes LF (phones show both alike; the
  carrier would bill the CR).
- Emoji and invisible format characters (ZWJ, variation selectors, skin tones, keycaps,
  flags) are removed, not replaced: a '?' in a civic notice reads as a question or a
  corrupted message, while the text around an emoji almost always stands on its own.
- Punctuation that KS X 1001 lacks gets its nearest KS X 1001 or ASCII form ("–"/"—" to
  "-", "•" to "·", "₩" to "￦", exotic spaces to " ", "©" to "(C)"); Latin letters with
  accents lose the accent ("é" to "e"); fullwidth/halfwidth forms go through NFKC.
- Modern Hangul syllables outside KS X 1001's 2,350 (똠, 햏, 뷁, ...) exist only in CP949
  (Microsoft's UHC extension, still 2 bytes). NHN documents EUC-KR, so by default they are
  spelled out in KS X 1001 compatibility jamo ("똠" to "ㄸㅗㅁ", readable, 2 bytes per jamo).
  Pass `allow_cp949=True` for a provider confirmed to accept CP949; the byte count of such
  a syllable is 2 either way. (Python's `euc_kr` codec would encode them as an 8-byte
  KS X 1001 jamo-composition sequence that carriers do not accept: never trust it for them.)
- Anything else that cannot be carried (rare Hanja, other scripts) becomes "□", the
  conventional "missing glyph" box, so the reader sees that something was there.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

SMS_MAX_BYTES = 90
LMS_MAX_BYTES = 2000
#: Appended when a text is cut to fit an LMS; U+2026 is in KS X 1001 (2 bytes).
ELLIPSIS = "…"
#: Stands for a character that cannot be carried at all.
MISSING = "□"

_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3

# Punctuation and symbols KS X 1001 lacks, with the closest form it has (checked against
# Python's euc_kr codec: "·", "“", "”", "‘", "’", "…", "€", "※", "★", "℃" are present).
_REPLACEMENTS: dict[str, str] = {
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2022": "·",
    "\u2027": "·",
    "\u2219": "·",
    "\u20a9": "￦",
    "\u00a9": "(C)",
    "\u201a": ",",
    "\u201e": '"',
    "\u2039": "<",
    "\u203a": ">",
    "\u00ab": "《",
    "\u00bb": "》",
    "\u2032": "'",
    "\u2033": '"',
}
_SPACES = frozenset("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f")


def _is_emoji_or_invisible(ch: str) -> bool:
    """True for emoji, their modifiers and joiners, and other invisible format characters."""
    cp = ord(ch)
    if 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF or 0x2B00 <= cp <= 0x2BFF:
        return True
    if 0xFE00 <= cp <= 0xFE0F or 0xE0000 <= cp <= 0xE007F or cp in (0x20E3, 0x3030, 0x303D):
        return True
    return unicodedata.category(ch) in ("Cf", "So", "Cs", "Co")


def _encodes(ch: str, allow_cp949: bool) -> bool:
    """Can `ch` be sent as is? KS X 1001 (2 bytes) or ASCII; optionally CP949 syllables."""
    if ch.isascii():
        return ch.isprintable() or ch in "\n\t"
    if _HANGUL_FIRST <= ord(ch) <= _HANGUL_LAST:
        # euc_kr encodes syllables outside the 2,350 as an 8-byte composition: not carried.
        if len(ch.encode("euc_kr")) == 2:
            return True
        return allow_cp949
    try:
        return len(ch.encode("euc_kr")) == 2
    except UnicodeEncodeError:
        return False


@cache
def _compat_jamo() -> dict[str, str]:
    """Conjoining jamo (U+1100 block) -> compatibility jamo (U+3131 block, in KS X 1001)."""
    table: dict[str, str] = {}
    for cp in range(0x3131, 0x318F):
        compat = chr(cp)
        conjoining = unicodedata.normalize("NFKC", compat)
        if conjoining != compat and len(conjoining) == 1:
            table.setdefault(conjoining, compat)
            # A final consonant (U+11A8..) has its own code point; map it to the same letter.
            initial_to_final = _final_for_initial(conjoining)
            if initial_to_final:
                table.setdefault(initial_to_final, compat)
    return table


def _final_for_initial(jamo: str) -> str:
    """The final-consonant jamo with the same letter as an initial-consonant jamo, or ""."""
    name = unicodedata.name(jamo, "")
    if not name.startswith("HANGUL CHOSEONG "):
        return ""
    try:
        return unicodedata.lookup("HANGUL JONGSEONG " + name.removeprefix("HANGUL CHOSEONG "))
    except KeyError:
        return ""


def _spell_out(syllable: str) -> str:
    """A syllable outside KS X 1001 as its compatibility jamo: "똠" -> "ㄸㅗㅁ"."""
    table = _compat_jamo()
    parts = unicodedata.normalize("NFD", syllable)
    return "".join(table.get(j, MISSING) for j in parts)


def _replace(ch: str) -> str:
    """The KS X 1001/ASCII stand-in for one character that cannot be sent as is."""
    if ch in _SPACES:
        return " "
    if ch in _REPLACEMENTS:
        return _REPLACEMENTS[ch]
    if _HANGUL_FIRST <= ord(ch) <= _HANGUL_LAST:
        return _spell_out(ch)
    # Fullwidth/halfwidth and other compatibility forms, then accents stripped.
    for form in ("NFKC", "NFKD"):
        candidate = "".join(c for c in unicodedata.normalize(form, ch) if not unicodedata.combining(c))
        if candidate and candidate != ch and all(_encodes(c, False) for c in candidate):
            return candidate
    return MISSING


def euckr_safe(text: str, *, allow_cp949: bool = False) -> str:
    """`text` with every character an EUC-KR SMS can carry kept and the rest replaced.

    See the module docstring for what becomes what. Never raises; idempotent.
    """
    normalised = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).replace("\r", "\n")
    out: list[str] = []
    dropped = False
    for ch in normalised:
        if ch in _SPACES or ch in _REPLACEMENTS:
            out.append(_replace(ch))
            dropped = False
        elif _encodes(ch, allow_cp949):
            # A removed emoji leaves no double space and no leading space behind.
            if ch == " " and dropped and (not out or out[-1] in " \n"):
                continue
            out.append(ch)
            dropped = False
        elif _is_emoji_or_invisible(ch):
            dropped = True
        else:
            out.append(_replace(ch))
            dropped = False
    return "".join(out)


def _byte_length(safe: str) -> int:
    # Every character of a safe text is ASCII (1 byte) or a 2-byte KS X 1001/CP949 code.
    return sum(1 if ch.isascii() else 2 for ch in safe)


def encoded_length(text: str, *, allow_cp949: bool = False) -> int:
    """Bytes `text` occupies in an SMS/LMS once made safe (what the carrier counts and bills)."""
    return _byte_length(euckr_safe(text, allow_cp949=allow_cp949))


def choose(text: str, *, allow_cp949: bool = False) -> tuple[str, str]:
    """("sms" | "lms", safe text) for a message body.

    Up to 90 bytes is an SMS, up to 2,000 an LMS; a longer text is cut at a character
    boundary and ends with "…" so that the whole LMS is at most 2,000 bytes.
    """
    safe = euckr_safe(text, allow_cp949=allow_cp949)
    size = _byte_length(safe)
    if size <= SMS_MAX_BYTES:
        return "sms", safe
    if size <= LMS_MAX_BYTES:
        return "lms", safe
    budget = LMS_MAX_BYTES - _byte_length(ELLIPSIS)
    used = 0
    cut = 0
    for i, ch in enumerate(safe):
        width = 1 if ch.isascii() else 2
        if used + width > budget:
            break
        used += width
        cut = i + 1
    return "lms", safe[:cut].rstrip() + ELLIPSIS


@dataclass(frozen=True, slots=True)
class Explanation:
    """What `choose` would make of a staff member's answer, for the console's byte counter.

    `kind` is "sms" or "lms"; `bytes` the EUC-KR size of the whole text once made safe (before
    any cut, so the counter can show how far over 2,000 it is); `safe` the text as it would be
    sent (cut and ending in "…" when too long); `changes` each distinct character that would be
    replaced or removed, in order of first appearance, with what it becomes ("" when removed);
    `cut` the end of the text that would not be sent ("" when nothing is cut)."""

    kind: str
    bytes: int
    safe: str
    changes: tuple[tuple[str, str], ...]
    cut: str


def explain(text: str, *, allow_cp949: bool = False) -> Explanation:
    """Explain `choose(text)`: see `Explanation`. Pure; never raises.

    Each character is judged by `euckr_safe` itself (one character at a time, after the same
    NFC/newline normalisation), so the explanation cannot drift from what is sent."""
    kind, sent = choose(text, allow_cp949=allow_cp949)
    whole = euckr_safe(text, allow_cp949=allow_cp949)
    normalised = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).replace("\r", "\n")
    changes: dict[str, str] = {}
    for ch in normalised:
        if ch not in changes:
            after = euckr_safe(ch, allow_cp949=allow_cp949)
            if after != ch:
                changes[ch] = after
    cut = ""
    if sent != whole:  # cut to fit an LMS: `sent` is a prefix of `whole` (right-stripped) plus "…"
        cut = whole[len(sent) - len(ELLIPSIS) :].strip()
    return Explanation(kind, _byte_length(whole), sent, tuple(changes.items()), cut)
