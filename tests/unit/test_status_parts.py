"""The status page's parts from a /health document: each part red, amber or green for the right
reason; the decisions in Korean with masked numbers."""

from __future__ import annotations

from typing import Any

from gateway.console import status
from gateway.infra.recent import RecentDecisions

TROUBLED: dict[str, Any] = {
    "ready": False,
    "draining": False,
    "uptime_s": 90061.0,
    "pbx": [
        {
            "name": "city-hall",
            "connected": True,
            "authenticated": True,
            "seconds_since_last_event": 2.5,
            "reconnects": 0,
        },
        {
            "name": "annex",
            "connected": False,
            "authenticated": False,
            "last_error": "connection refused",
            "last_error_at": 1_764_000_000.0,
            "seconds_since_last_event": None,
            "reconnects": 7,
        },
    ],
    "redis": {"reachable": False, "error": "redis: Connection refused"},
    "rules": {
        "version": "abc123",
        "routing_version": "def456",
        "console_version": None,
        "loaded_at": 1_764_000_000.0,
        "last_error": "rules/console.yaml:3: canned[0].rules[0]: unknown rule 'x'",
    },
    "queues": {
        "enqueued": 10,
        "enqueue_failed": 0,
        "dead_letters": {"sms": 3, "postcall": 0},
        "backlog": {"sms": {"ready": 2, "delayed": 1, "held": 0}, "total": {"ready": 2}},
    },
    "providers": {
        "lettering": {"sandbox": {"circuit": "none", "recent": 10, "recent_errors": 0, "error_rate": 0.0}},
        "messaging": {"nhn-sms": {"circuit": "open", "recent": 20, "recent_errors": 15, "error_rate": 0.75}},
    },
    "records": {"pending": 0, "dropped": 4, "emitted": 100, "errors": 0, "dropping": 1},
}


def test_each_troubled_part_is_red_for_its_reason() -> None:
    pbx = status.pbx_parts(TROUBLED)
    assert pbx.state == status.BAD
    assert ("city-hall", "로그인됨", status.OK) in pbx.rows and ("annex", "끊김", status.BAD) in pbx.rows
    assert ("  재연결 횟수", "7", status.WARN) in pbx.rows
    assert any(label == "  마지막 오류" and "connection refused" in value for label, value, _ in pbx.rows)

    assert status.redis_part(TROUBLED).state == status.BAD
    rules = status.rules_part(TROUBLED)
    assert rules.state == status.BAD and "이전 규칙으로 운영 중" in rules.note
    assert ("답변·매뉴얼 (console.yaml)", "없음", "") in rules.rows

    queues = status.queues_part(TROUBLED, {})
    assert queues.state == status.BAD and ("실패 보관함 문자 발송", "3", status.BAD) in queues.rows
    assert ("실패 보관함 통화 후 안내", "0", "") in queues.rows
    providers = status.providers_part(TROUBLED)
    assert providers.state == status.BAD
    assert ("알림톡·문자 nhn-sms", "회로 차단(열림) · 최근 20건 중 오류 15건 (75%)", status.BAD) in providers.rows
    assert ("통화 중 문자 sandbox", "최근 10건 중 오류 0건 (0%)", status.OK) in providers.rows
    records = status.records_part(TROUBLED, has_store=True)
    assert records.state == status.BAD and "버려지고" in records.note


def test_a_healthy_document_is_green_and_an_empty_one_says_what_is_missing() -> None:
    healthy = {
        **TROUBLED,
        "pbx": [TROUBLED["pbx"][0]],
        "redis": {"reachable": True, "latency_ms": 0.4},
        "rules": {**TROUBLED["rules"], "last_error": ""},
        "queues": {"enqueued": 1, "enqueue_failed": 0, "dead_letters": {"sms": 0}, "backlog": {}},
        "providers": {"lettering": {}, "messaging": {"nhn-sms": {"circuit": "closed", "recent": 5}}},
        "records": {"pending": 0, "dropped": 0, "emitted": 5, "errors": 0, "dropping": 0},
    }
    parts = [
        status.pbx_parts(healthy),
        status.redis_part(healthy),
        status.rules_part(healthy),
        status.queues_part(healthy, {}),
        status.providers_part(healthy),
        status.records_part(healthy, has_store=True),
    ]
    assert [p.state for p in parts] == [status.OK] * 6
    assert status.pbx_parts({}).state == status.OFF and status.providers_part({}).state == status.OFF
    assert status.records_part({}, has_store=False).rows[-1] == ("기록 저장소(보고서)", "설정 안 됨", status.WARN)


def test_decisions_read_in_korean_with_masked_numbers() -> None:
    recent = RecentDecisions(size=10)
    recent.decision(
        {"event": "lettering", "pbx": "p", "call": "1", "extension": "2001", "to": "+821012345678", "result": "failed"}
    )
    recent.decision({"event": "skipped", "pbx": "p", "call": "2", "reason": "opted_out", "to": "+821012345678"})
    recent.decision({"event": "inbound", "provider": "nhn", "message_id": "m1", "queue": "duty", "status": "accepted"})
    recent.decision({"event": "closed", "thread": "t1", "staff": "kim"})
    closed, inbound, skipped, lettering = (status.decision_row(d, {"duty": "당직실"}) for d in recent.last())
    assert (lettering.kind, lettering.result, lettering.state) == ("통화 중 문자", "실패", status.BAD)
    assert "010-****-5678" in lettering.text and "12345678" not in lettering.text
    assert (skipped.result, skipped.state) == ("생략: 수신 거부", status.WARN)
    assert "대기열 당직실(duty)" in inbound.text and (inbound.result, inbound.state) == ("접수", status.OK)
    assert (closed.kind, closed.text, closed.result) == ("종결", "kim 대화 t1", "종결됨")
