"""Opt-out and opt-in keywords as citizens actually write them.

A citizen refuses messages by texting a short message such as "수신거부", but real phones and
real people add things around the word: a carrier's tag ("[Web발신]"), spaces inside the word
("수신 거부"), a polite ending ("수신거부합니다", "수신거부 해 주세요"), full-width letters
("ＳＴＯＰ"), trailing punctuation or emoticons ("stop!!", "그만 보내세요ㅠㅠ"). `classify` sees
through all of that, and still refuses to read a longer sentence as a refusal:

1. The text is normalised: invisible format characters removed, Unicode NFKC (full-width
   letters and digits, half-width jamo), case-folded; bracketed carrier/app tags at the start or
   end ("[Web발신]", "(광고)", "[국제발신]", "[SKT]", any "[...발신]") are cut off.
2. It is compacted: everything but letters and digits goes (spaces, punctuation, symbols,
   emoji), and so do lone jamo (emoticons such as "ㅠㅠ", "ㅋㅋ").
3. A short compact text that is exactly  [lead words] KEYWORD [keywords or endings]  is an
   opt-out (or opt-in); the leads ("문자", "이제", "제발"), keywords and endings ("합니다",
   "해주세요", "부탁드립니다", "신청", "please") are configured in messaging.yaml. An opt-out
   keyword followed by an undo word ("수신거부 취소", "수신거부 해제해주세요") is an opt-in.
4. Anything else that mentions refusing messages ("수신거부 어떻게 하나요?", "수신거부 했는데
   왜 또 와요?", "수신거부 안 할게요") is a `QUESTION`: not an opt-out, but the intake tags it
   and answers with how to opt out. Bare short keywords (거부, 그만, stop, 해지) inside a sentence
   are not mentions ("거부권 행사 관련 문의", "stop sign near the school is broken"): only the
   configured mention words are.

Everything is compiled once per word set (`OptoutWords`); classifying a message runs a few
precompiled regular expressions and no Python loop over its characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

OPT_OUT = "opt_out"
OPT_IN = "opt_in"
QUESTION = "question"  # mentions opting out without being one: tagged and answered with how to
QUESTION_TAG = "optout_question"

# A compact text longer than this is a sentence, never a keyword message (and the full-match
# regular expressions never see a long input); nor is a text longer than MAX_KEYWORD_TEXT before
# compaction, however much of it is punctuation or emoji (an LMS is not compacted for nothing).
MAX_KEYWORD_CHARS = 40
MAX_KEYWORD_TEXT = 200
# How many endings (or repeated keywords) may follow the keyword, and leads precede it:
# "수신거부 신청 합니다 감사합니다" is three. Bounded so that matching stays linear.
MAX_ENDINGS = 4
MAX_LEADS = 3

# Removed before NFKC: invisible format characters that NFKC keeps (zero-width space/joiners,
# direction marks, word joiner, BOM, soft hyphen), and lone compatibility and half-width jamo,
# the emoticons "ㅠㅠ", "ㅋㅋ", "ㅎㅎ": NFKC turns those into conjoining jamo, which then compose
# with each other and with the syllable before them ("요ㅋㅜ" would become "요쿠").
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\u3130-\u318f\uffa0-\uffdc]+")
# What compaction removes: everything that is not a letter or digit, "_", and conjoining jamo
# left over after NFKC (a decomposed syllable composes; a lone jamo is an emoticon).
_NOT_WORD_CLASS = r"[\W_\u1100-\u11ff\ua960-\ua97f\ud7b0-\ud7ff]"
_NOT_WORD = re.compile(_NOT_WORD_CLASS + "+")
_OPEN, _CLOSE = r"\[(<{【〔「『《〈", r"\])>}】〕」』》〉"
_TAG_INNER = rf"[^{_OPEN}{_CLOSE}]{{1,20}}"
_LEADING_TAG = re.compile(rf"\s*[{_OPEN}]({_TAG_INNER})[{_CLOSE}]")
_TRAILING_TAG = re.compile(rf"[{_OPEN}]({_TAG_INNER})[{_CLOSE}]\s*$")


def compact(text: str) -> str:
    """NFKC, case-folded, with only letters and digits left (no lone jamo): the form keywords
    and configured words are compared in."""
    return _NOT_WORD.sub("", _fold(text))


def _fold(text: str) -> str:
    """NFKC and case-folded, without invisible characters and lone jamo."""
    return unicodedata.normalize("NFKC", _INVISIBLE.sub("", text)).casefold()


def _alternation(words: Iterable[str], gap: str = "") -> str:
    """A regex for any of `words`, longest first (so that "해주세요" is tried before "해"),
    with `gap` allowed between the letters of each."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(gap.join(map(re.escape, w)) if gap else re.escape(w) for w in ordered)


# ----------------------------------------------------------------------------- defaults
# Also written, with the reasons, in rules/messaging.yaml (which replaces them when it sets a list).
DEFAULT_OPTOUT_KEYWORDS = (
    "수신거부",
    "수신거절",
    "수신차단",
    "수신중지",
    "수신중단",
    "수신해지",
    "수신동의철회",
    "동의철회",
    "수신동의취소",
    "거부",
    "그만",
    "해지",
    "stop",
    "stopall",
    "unsubscribe",
    "optout",
)
DEFAULT_OPTIN_KEYWORDS = ("수신동의", "수신허용", "수신재개", "start", "unstop")
DEFAULT_LEADS = (
    "문자",
    "문자메시지",
    "문자메세지",
    "메시지",
    "메세지",
    "sms",
    "광고",
    "광고문자",
    "알림",
    "이제",
    "앞으로",
    "더이상",
    "제발",
    "저",
    "저는",
    "please",
    "pls",
    "다시",
)
DEFAULT_ENDINGS = (
    "요",
    "합니다",
    "해요",
    "함",
    "할게요",
    "할께요",
    "할래요",
    "하겠습니다",
    "하기",
    "하고싶어요",
    "하고싶습니다",
    "해주세요",
    "해줘",
    "해줘요",
    "해주십시오",
    "해주시기바랍니다",
    "해라",
    "하세요",
    "주세요",
    "좀",
    "부탁드립니다",
    "부탁드려요",
    "부탁합니다",
    "부탁해요",
    "바랍니다",
    "원합니다",
    "드립니다",
    "신청",
    "신청합니다",
    "요청",
    "요청합니다",
    "처리",
    "등록",
    "희망",
    "보내세요",
    "보내주세요",
    "보내지마세요",
    "받을게요",
    "받겠습니다",
    "받고싶어요",
    "받고싶습니다",
    "감사합니다",
    "고맙습니다",
    "수고하세요",
    "제발",
    "please",
    "pls",
    "me",
    "now",
    "all",
    "texting",
    "sending",
    "messages",
    "texts",
)
DEFAULT_UNDO = ("취소", "해제", "철회", "풀어", "풀기")
DEFAULT_MENTIONS = (
    "수신거부",
    "수신거절",
    "수신차단",
    "수신중지",
    "수신중단",
    "수신해지",
    "동의철회",
    "문자거부",
    "문자차단",
    "문자그만",
    "unsubscribe",
)
DEFAULT_CARRIER_TAGS = (
    "web발신",
    "국외발신",
    "국제발신",
    "해외발신",
    "광고",
    "skt",
    "kt",
    "lgu",
    "lgt",
    "lg유플러스",
    "알뜰폰",
)


@dataclass(frozen=True)
class OptoutWords:
    """The configured words (compacted, see `compact`), with their regular expressions compiled
    once at construction. Equal word sets compare equal; the patterns are not compared."""

    optout: tuple[str, ...] = DEFAULT_OPTOUT_KEYWORDS
    optin: tuple[str, ...] = DEFAULT_OPTIN_KEYWORDS
    leads: tuple[str, ...] = DEFAULT_LEADS
    endings: tuple[str, ...] = DEFAULT_ENDINGS
    undo: tuple[str, ...] = DEFAULT_UNDO
    mentions: tuple[str, ...] = DEFAULT_MENTIONS
    carrier_tags: tuple[str, ...] = DEFAULT_CARRIER_TAGS
    _optout: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _optin: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _mention: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("optout", "optin", "leads", "endings", "undo", "mentions", "carrier_tags"):
            words = tuple(dict.fromkeys(w for w in map(compact, getattr(self, name)) if w))
            object.__setattr__(self, name, words)
        if not self.optout or not self.optin:
            raise ValueError("at least one opt-out and one opt-in keyword are needed")
        lead = f"(?:{_alternation(self.leads)}){{0,{MAX_LEADS}}}" if self.leads else ""
        out, ends = _alternation(self.optout), _alternation(self.endings)
        tail_out = f"(?:{out}|{ends}){{0,{MAX_ENDINGS}}}" if ends else f"(?:{out}){{0,{MAX_ENDINGS}}}"
        optin_head = _alternation(self.optin)
        if self.undo:  # "수신거부 취소": undoing the refusal is asking to receive again
            optin_head += f"|(?:{out})(?:{_alternation(self.undo)})"
        tail_in = f"(?:{_alternation(self.optin)}|{ends}){{0,{MAX_ENDINGS}}}" if ends else ""
        object.__setattr__(self, "_optout", re.compile(f"{lead}(?:{out}){tail_out}"))
        object.__setattr__(self, "_optin", re.compile(f"{lead}(?:{optin_head}){tail_in}"))
        # Mentions are searched in the folded text with what compaction removes allowed between
        # their letters ("수신 거부", "수신-거부"): the same result as searching the compact
        # text, without compacting a long message (the costliest step for a 2,000-character LMS).
        mention = _alternation(self.mentions, gap=_NOT_WORD_CLASS + "*")
        object.__setattr__(self, "_mention", re.compile(mention) if self.mentions else None)

    def strip_tags(self, text: str) -> str:
        """`text` (NFKC, case-folded) without the carrier/app tags at its start and end."""
        while (m := _LEADING_TAG.match(text)) and self._is_tag(m.group(1)):
            text = text[m.end() :]
        while (m := _TRAILING_TAG.search(text)) and self._is_tag(m.group(1)):
            text = text[: m.start()]
        return text

    def _is_tag(self, inner: str) -> bool:
        word = compact(inner)
        return word in self.carrier_tags or (word.endswith("발신") and len(word) <= 12)

    def classify(self, text: str) -> str:
        """`OPT_OUT`, `OPT_IN`, `QUESTION` or "" for a citizen's message (see the module doc)."""
        folded = _fold(text)
        if len(folded) <= MAX_KEYWORD_TEXT:
            if folded[:1] in _TAG_STARTS or folded.rstrip()[-1:] in _TAG_ENDS:
                folded = self.strip_tags(folded)
            word = _NOT_WORD.sub("", folded)
            if not word:
                return ""
            if len(word) <= MAX_KEYWORD_CHARS:
                # Opt-in first: "수신거부 취소" contains the opt-out keyword but undoes it.
                if self._optin.fullmatch(word):
                    return OPT_IN
                if self._optout.fullmatch(word):
                    return OPT_OUT
        if self._mention is not None and self._mention.search(folded):
            return QUESTION
        return ""


# First/last characters that may begin/end a tag: most messages skip `strip_tags` altogether.
_TAG_STARTS = frozenset(" \t\r\n[(<{【〔「『《〈")
_TAG_ENDS = frozenset("])>}】〕」』》〉")

DEFAULT_WORDS = OptoutWords()


def classify(text: str, words: OptoutWords = DEFAULT_WORDS) -> str:
    """`OPT_OUT`, `OPT_IN`, `QUESTION` or "" (see the module docstring)."""
    return words.classify(text)
