"""Live updates over real HTTP: `GET /events` streams the events of the queues a person may see
(a message accepted through `Intake.accept` during the test arrives), not those of other queues,
and the streams end when the console shuts down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse

from gateway.console.app import SESSION_COOKIE
from tests.console.console_site import DUTY, Person, Site, running_site

WAIT_S = 10.0  # a bound on each wait: an event that never arrives fails the test


@pytest.fixture
async def site(redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    async for s in running_site(redis_url, sqlite_records_url):
        yield s


class Stream:
    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def event(self) -> dict[str, Any]:
        """The next data event (comments and the retry line skipped)."""
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), WAIT_S)
            if not line:
                raise EOFError("the stream ended")
            if line.startswith(b"data: "):
                return dict(json.loads(line[6:]))

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            event = await self.event()
            if event.get("k") == kind:
                return event


async def open_stream(site: Site, who: Person) -> Stream:
    response = await site.http.get(f"{site.base}/events", headers={"Cookie": f"{SESSION_COOKIE}={who.session_id}"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Security-Policy" in response.headers
    first = await asyncio.wait_for(response.content.readline(), WAIT_S)
    assert first.startswith(b"retry: ")
    # The stream's subscription to the hub is made before its headers are sent: from here on,
    # nothing published is missed.
    return Stream(response)


async def test_a_new_message_reaches_those_who_may_see_its_queue_only(site: Site) -> None:
    kim = await site.person("kim", "complaint")
    choi = await site.person("choi", "duty")
    kim_stream, choi_stream = await open_stream(site, kim), await open_stream(site, choi)
    assert site.hub.subscribers == 2

    tid, queue = await site.text("가로등이 꺼졌어요")
    assert queue == "complaint"
    event = await kim_stream.event()
    assert (event["k"], event["q"], event["t"]) == ("message", "complaint", tid)
    assert "가로등" not in json.dumps(event, ensure_ascii=False)  # ids only, never a text

    duty_tid, _ = await site.text("당직실입니다", to=DUTY, sender="+821077778888")
    first_for_choi = await choi_stream.event()
    assert (first_for_choi["q"], first_for_choi["t"]) == ("duty", duty_tid)  # the complaint one never came
    kim_stream.response.close()
    choi_stream.response.close()


async def test_streams_end_when_the_console_shuts_down(site: Site) -> None:
    kim = await site.person("kim", "complaint")
    stream = await open_stream(site, kim)
    assert site.hub.subscribers == 1
    assert site.runner is not None
    await asyncio.wait_for(site.runner.shutdown(), WAIT_S)
    with pytest.raises(EOFError):
        while True:
            await stream.event()
    assert site.hub.subscribers == 0  # (unsubscribed before the stream's end was sent)


async def test_without_a_session_no_stream(site: Site) -> None:
    answer = await site.get(None, "/events")
    assert answer.status == 303


@pytest.fixture
async def quick_site(redis_url: str, sqlite_records_url: str) -> AsyncIterator[Site]:
    """A console whose streams send their heartbeat (and check the account) every 0.1 s."""
    async for s in running_site(redis_url, sqlite_records_url, events_heartbeat_s=0.1):
        yield s


async def test_heartbeats_then_the_stream_ends_when_the_account_is_disabled(quick_site: Site) -> None:
    site = quick_site
    kim = await site.person("kim", "complaint")
    stream = await open_stream(site, kim)
    line = b"\n"
    while line == b"\n":
        line = await asyncio.wait_for(stream.response.content.readline(), WAIT_S)
    assert line == b": hb\n"  # a comment: EventSource ignores it, proxies see traffic
    await site.directory.disable("test", "kim")
    assert (await stream.until("ended")) == {"k": "ended"}
    with pytest.raises(EOFError):
        await stream.event()
    assert site.hub.subscribers == 0
