"""Fixtures of the console's browser tests: Debian's chromium driven by Playwright (PyPI), the
stack of tests/support/console_stack.py, and the outside-URL guard.

The browser is Debian's `/usr/bin/chromium` (ops/bootstrap.sh installs it), given to Playwright
through `executable_path`: `playwright install` downloads a browser from the internet, which
neither CI nor a city's separated network has. Root needs `--no-sandbox`; the other flags keep
chromium from calling home (updates, sync, QUIC probes) while it runs.

Every page of every context is routed through `OutsideGuard`: a request for anything but
127.0.0.1 is refused and noted, and the test fails (a console page must never load a script,
style or font from outside: staff PCs of a city are cut off from the internet); so does a page
answered without its Content-Security-Policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, Request, Route, sync_playwright
from playwright.sync_api import Response as PwResponse

from tests.support.console_stack import ConsoleStack, console_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000  # any single wait for an element; a condition that never holds fails the test


class OutsideGuard:
    """Notes every request a page makes and refuses any that leaves 127.0.0.1."""

    # Not network requests: inline data, a page's own blank document, object URLs.
    LOCAL_SCHEMES = ("data", "about", "blob")

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.outside: list[str] = []
        self.pages: list[str] = []  # every document the console answered
        self.without_csp: list[str] = []  # ... and those without a Content-Security-Policy

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in self.LOCAL_SCHEMES:
            return True
        return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == "127.0.0.1"

    def on_route(self, route: Route) -> None:
        url = route.request.url
        if self.allowed(url):
            route.continue_()
        else:
            self._outside(url)
            route.abort("blockedbyclient")

    def on_request(self, request: Request) -> None:
        self.seen.append(request.url)
        if not self.allowed(request.url):
            self._outside(request.url)

    def _outside(self, url: str) -> None:
        if url not in self.outside:  # both the route and the request event see it
            self.outside.append(url)

    def on_response(self, response: PwResponse) -> None:
        if response.request.resource_type != "document":
            return
        self.pages.append(response.url)
        if "content-security-policy" not in response.headers:
            self.without_csp.append(f"{response.status} {response.url}")

    def attach(self, context: BrowserContext) -> None:
        context.route("**/*", self.on_route)
        context.on("request", self.on_request)
        context.on("response", self.on_response)

    def check(self) -> None:
        assert not self.outside, f"requests that left 127.0.0.1: {self.outside}"
        assert self.seen, "the guard saw no request at all: it is not attached"
        assert not self.without_csp, f"pages without a Content-Security-Policy: {self.without_csp}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """One stack per test module (starting it takes seconds); tests use their own citizens and
    accounts so that they do not depend on each other's order."""
    with console_stack(tmp_path_factory.mktemp("console-stack")) as running:
        yield running


# Module-scoped, not session: Playwright's sync API runs an event loop of its own, which must be
# gone before the suite's asyncio tests (pytest-asyncio) run their loops in the same thread.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run ops/bootstrap.sh (it installs Debian's chromium)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def guard() -> OutsideGuard:
    return OutsideGuard()


NewContext = Callable[..., BrowserContext]


@pytest.fixture
def new_context(browser: Browser, guard: OutsideGuard) -> Iterator[NewContext]:
    """Make a browser context (a person's own browser: cookies apart), guarded, Korean locale,
    1280x800 unless a `viewport` is given. All are closed at the end and the guard checked."""
    made: list[BrowserContext] = []

    def make(**options: object) -> BrowserContext:
        settings: dict[str, object] = {
            "viewport": DESKTOP,
            "locale": "ko-KR",
            "timezone_id": "Asia/Seoul",
            "service_workers": "block",  # nothing may answer a request but the console itself
            **options,
        }
        context = browser.new_context(**settings)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        guard.attach(context)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()
    if made:
        guard.check()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $GATEWAY_SCREENSHOTS (ops/screenshots.py sets it to docs/), else
    the test's tmp dir."""
    target = os.environ.get("GATEWAY_SCREENSHOTS")
    directory = Path(target) if target else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
