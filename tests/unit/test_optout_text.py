"""Opt-out as citizens actually write it (issue #13 item 3).

A table of real-looking texts both ways, run through the intake's keyword function with the
built-in defaults and with the shipped rules/messaging.yaml; property tests for the kinds of
noise phones and people add; the rules file's new keys; and, end to end through the real
webhook, a carrier-tagged polite refusal that opts the number out (a later send is refused by
the outbox guard) and a question that gets the how-to reply and no opt-out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.domain.optout import MAX_KEYWORD_CHARS, MAX_KEYWORD_TEXT, OPT_IN, OPT_OUT, QUESTION, compact
from gateway.domain.postcall import MessagingRules
from gateway.errors import RulesError
from gateway.inbox.intake import keyword_of
from gateway.rules.messaging import load_messaging
from tests.conftest import RULES

SHIPPED = load_messaging(RULES)
RULESETS = {"defaults": MessagingRules(), "messaging.yaml": SHIPPED}

OPT_OUTS = [
    "수신거부",
    "수신 거부",
    "수신거부.",
    " 수신거부 ",
    "수신거부합니다",
    "수신거부 합니다.",
    "수신거부요",
    "수신거부요~",
    "수신거부해주세요",
    "수신거부 해 주세요",
    "수신거부 해주세요!!",
    "수신 거부 부탁드립니다",
    "수신거부 부탁드려요",
    "수신거부할게요",
    "수신거부 할께요",
    "수신거부 하겠습니다",
    "수신거부 신청",
    "수신거부 신청합니다",
    "수신거부 요청합니다",
    "문자 수신거부",
    "문자수신거부요",
    "문자그만",
    "문자 그만 보내세요",
    "그만 보내세요",
    "그만보내주세요",
    "이제 그만 보내주세요ㅠㅠ",
    "그만 받을게요",
    "거부",
    "거부합니다",
    "거부요!",
    "해지",
    "해지해주세요",
    "해지 부탁드립니다",
    "STOP",
    "Stop.",
    "ＳＴＯＰ",
    "stop!!",
    "stop please",
    "Unsubscribe",
    "UNSUBSCRIBE ME",
    "[Web발신] 수신 거부합니다.",
    "[Web발신]\n수신거부",
    "[web발신] STOP",
    "[국외발신] 수신거부",
    "[국제발신]\r\n그만",
    "(광고) 수신거부",
    "[SKT] 수신거부",
    "[LGU+] 해지요",
    "수신거부 [Web발신]",
    "수신거부^^",
    "수신거부ㅠㅠ",
    "수신거부 ㅋㅋ",
    "수신거부 🙏",
    "수신거부‼️",
    "수\u200b신\u200b거\u200b부",
    "\ufeff수신거부",
    "ｓｔｏｐ　ｐｌｅａｓｅ",
    "수신거부 감사합니다",
    "수신거부 처리 부탁드립니다",
    "수신차단해주세요",
    "수신동의 철회합니다",
    "제발 그만",
    "'수신거부'",
    '"STOP"',
    "수신거부\n\n",
    "수신 거 부",
    "수신동의 취소",
]
OPT_INS = [
    "수신동의",
    "수신 동의",
    "수신동의합니다",
    "수신 허용",
    "수신허용해주세요",
    "START",
    "start.",
    "Ｓｔａｒｔ",
    "unstop",
    "수신거부 취소",
    "수신거부취소요",
    "수신거부 해제해주세요",
    "수신거부 철회합니다",
    "[Web발신] 수신동의",
    "다시 수신동의 합니다",
]
# Ask about opting out, or mention it in a longer message: not an opt-out, tagged and answered.
QUESTIONS = [
    "수신거부 어떻게 하나요?",
    "수신거부하는 방법 알려주세요",
    "수신거부 했는데 왜 또 와요?",
    "수신거부 안 할게요",
    "수신거부 하려면 뭐라고 보내요?",
    "수신 거부는 어디서 하나요",
    "문자 수신거부 하고 싶은데 방법이 있나요?",
    "수신거부 했는데 계속 문자가 옵니다. 확인 부탁드립니다",
    "unsubscribe how?",
    "how do I unsubscribe from these texts",
    "[Web발신] 수신거부 어떻게 해요?",
    "수신차단 하는 법",
    "문자 그만 받고 싶은데 어떻게 해야 되나요",
    "지난주에 수신거부 신청했는데 오늘 또 왔어요 담당자 연락주세요",
    "수신거부 말고 담당자 바꿔주세요",
]
# Ordinary messages, including ones that contain a bare keyword: neither an opt-out nor tagged.
ORDINARY = [
    "가로등 고장입니다",
    "거부권 행사 관련 문의",
    "그만 좀 하세요 담당자 바꿔주세요",
    "stop sign near the school is broken",
    "공사 소음 그만 좀 해주세요 밤에 잠을 못 잡니다",
    "카드 해지 관련 문의드립니다",
    "계약 해지 방법 알려주세요",
    "민원 처리를 거부당했습니다",
    "주차 단속 거부합니다 이의신청 하려고요",
    "버스 정류장 STOP 표시가 떨어졌어요",
    "Please stop the construction noise at night",
    "다시 받을게요",
    "네 알겠습니다",
    "감사합니다",
    "요",
    "!!!",
    "ㅠㅠ",
    "",
    "   ",
    "[Web발신]",
    "여권 발급 문의",
    "그만두고 싶어요",
    "해지펀드 투자 사기 신고합니다",
    "Stopover 가능한가요",
    "start time of the festival?",
    "동의합니다",
    "스탑",
    "수신",
    "문자 보냈는데 답이 없네요",
    "담당자 전화번호 알려주세요",
]


@pytest.mark.parametrize("rules", RULESETS.values(), ids=list(RULESETS))
@pytest.mark.parametrize("text", OPT_OUTS)
def test_opt_out_as_written(text: str, rules: MessagingRules) -> None:
    assert keyword_of(text, rules) == OPT_OUT


@pytest.mark.parametrize("rules", RULESETS.values(), ids=list(RULESETS))
@pytest.mark.parametrize("text", OPT_INS)
def test_opt_in_as_written(text: str, rules: MessagingRules) -> None:
    assert keyword_of(text, rules) == OPT_IN


@pytest.mark.parametrize("rules", RULESETS.values(), ids=list(RULESETS))
@pytest.mark.parametrize("text", QUESTIONS)
def test_a_question_or_complaint_about_opting_out_is_not_one(text: str, rules: MessagingRules) -> None:
    assert keyword_of(text, rules) == QUESTION


@pytest.mark.parametrize("rules", RULESETS.values(), ids=list(RULESETS))
@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_messages_are_neither(text: str, rules: MessagingRules) -> None:
    assert keyword_of(text, rules) == ""


def test_the_table_is_big_enough() -> None:
    assert len(OPT_OUTS) + len(OPT_INS) >= 40 and len(QUESTIONS) + len(ORDINARY) >= 40


# ----------------------------------------------------------------------------- properties
# Accepted forms, and what phones and people put around and inside them.
ACCEPTED = [
    "수신거부",
    "수신거부합니다",
    "수신 거부 해주세요",
    "문자 그만 보내세요",
    "거부",
    "해지요",
    "STOP",
    "unsubscribe",
]
TAGS = ["", "[Web발신]", "[web발신] ", "(광고)", "[국제발신]\n", "[국외발신] ", "[KT]", "【Web발신】"]
NOISE = st.text(alphabet=" \t\n.,!?~^-*'\"…·ㅠㅜㅋㅎ\u200b\u3000！？。", max_size=3)
ORDINARY_WORDS = [
    "가로등이",
    "고장",
    "났어요",
    "어제부터",
    "집",
    "앞",
    "공사",
    "소음이",
    "너무",
    "심합니다",
    "확인",
    "바랍니다",
    "주차",
    "단속",
    "문의",
    "드립니다",
    "버스",
    "정류장",
    "옆",
    "쓰레기",
    "민원",
    "담당자",
    "연락",
    "주세요",
]


@given(
    word=st.sampled_from(ACCEPTED),
    tag=st.sampled_from(TAGS),
    cuts=st.lists(NOISE, min_size=12, max_size=12),
    before=NOISE,
    after=NOISE,
    width=st.booleans(),
)
@example(word="수신거부합니다", tag="[Web발신]", cuts=[" "] * 12, before="", after=".", width=False)
def test_noise_around_and_inside_an_accepted_form_keeps_it_an_opt_out(
    *, word: str, tag: str, cuts: list[str], before: str, after: str, width: bool
) -> None:
    if width:  # full-width letters, as some phones' keyboards send them
        word = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)
    spaced = "".join(c + cuts[i % len(cuts)] for i, c in enumerate(word))
    assert keyword_of(tag + before + spaced + after, SHIPPED) == OPT_OUT


@given(
    left=st.lists(st.sampled_from(ORDINARY_WORDS), min_size=2, max_size=8),
    right=st.lists(st.sampled_from(ORDINARY_WORDS), min_size=1, max_size=8),
    word=st.sampled_from([*ACCEPTED, "수신동의", "START", "수신거부 취소"]),
)
def test_a_keyword_inside_a_longer_sentence_is_never_an_opt_out(left: list[str], right: list[str], word: str) -> None:
    assert keyword_of(" ".join([*left, word, *right]), SHIPPED) in ("", QUESTION)


@given(text=st.text(max_size=300))
def test_any_text_is_classified_without_error(text: str) -> None:
    assert keyword_of(text, SHIPPED) in ("", OPT_OUT, OPT_IN, QUESTION)


def test_a_long_message_is_never_a_keyword() -> None:
    assert keyword_of("수신거부 " + "요 " * MAX_KEYWORD_CHARS, SHIPPED) == QUESTION
    assert keyword_of("🙏" * MAX_KEYWORD_TEXT + "수신거부", SHIPPED) == QUESTION


MENTION_PIECES = st.sampled_from(
    [
        "수",
        "신",
        "거",
        "부",
        "문자",
        "그만",
        "unsub",
        "scribe",
        "UNSUBSCRIBE",
        "동의",
        "철회",
        " ",
        "-",
        "_",
        ".",
        "ㅠ",
        "\u200b",
        "\u1100",
        "ｕ",
        "가로등",
        "x",
    ]
)


@given(pieces=st.lists(MENTION_PIECES, max_size=40), pad=st.booleans())
def test_a_mention_is_found_as_in_the_compact_text(pieces: list[str], pad: bool) -> None:
    """Long messages are searched for mentions without being compacted: same answer."""
    text = ("가" * MAX_KEYWORD_TEXT if pad else "") + "".join(pieces)
    mentioned = any(m in compact(text) for m in SHIPPED.optout_words.mentions)
    assert (keyword_of(text, SHIPPED) == QUESTION) == mentioned or keyword_of(text, SHIPPED) in (OPT_OUT, OPT_IN)


# ----------------------------------------------------------------------------- rules file
def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "messaging.yaml").write_text(body, encoding="utf-8")
    return tmp_path


def test_the_shipped_rules_keep_the_builtin_words() -> None:
    """messaging.yaml lists the accepted forms for the telecom team; it must not lose any default."""
    defaults, shipped = MessagingRules().optout_words, SHIPPED.optout_words
    for name in ("optout", "optin", "leads", "endings", "undo", "mentions", "carrier_tags"):
        assert set(getattr(defaults, name)) <= set(getattr(shipped, name)), name
    assert "수신거부" in SHIPPED.optout_help


def test_the_telecom_team_can_add_endings_and_words(tmp_path: Path) -> None:
    rules = load_messaging(
        _write(
            tmp_path,
            "optout:\n  keywords: [수신거부, 거부해]\n  endings: [합니다, 하오]\n"
            "  mentions: [수신거부]\n  help: 수신거부라고 보내세요.\n",
        )
    )
    assert keyword_of("수신거부 하오", rules) == OPT_OUT
    assert keyword_of("거부해!", rules) == OPT_OUT
    assert keyword_of("수신거부 해주세요", rules) == QUESTION  # the file's list replaces the built-in one
    assert rules.optout_help == "수신거부라고 보내세요."


@pytest.mark.parametrize(
    "body, problem",
    [
        ("optout:\n  keywords: [수신거부, '!!']\n", "'!!'"),
        ("optout:\n  endings: [요, '~~']\n", "'~~'"),
        ("optout:\n  keywords: [수신거부]\n  optin_keywords: [수신 거부]\n", "both"),
        ("optout:\n  help: ''\n", "help"),
        ("optout:\n  endings: 요\n", "endings"),
    ],
)
def test_unusable_words_are_reported(tmp_path: Path, body: str, problem: str) -> None:
    with pytest.raises(RulesError) as info:
        load_messaging(_write(tmp_path, body))
    assert problem in str(info.value) and "messaging.yaml:" in str(info.value)


def test_words_are_compared_compacted() -> None:
    assert compact(" ＳＴＯＰ!! ") == "stop" and compact("수신 거부ㅠㅠ") == "수신거부" and compact("LGU+") == "lgu"


# ----------------------------------------------------------------------------- end to end
