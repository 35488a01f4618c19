"""The console's templates and static files load nothing from outside the gateway and obey its
Content-Security-Policy (no inline script or style, no inline event handlers), and the vendored
htmx is the file VENDORED.md names (its sha256)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from gateway.console.app import STATIC, templates
from gateway.console.inbox import install_filters

TEMPLATES = Path(templates().loader.searchpath[0])  # type: ignore[union-attr]
VENDOR = STATIC / "vendor"
PAGES = sorted(TEMPLATES.glob("*.html"))
OWN_STATIC = sorted(p for p in STATIC.rglob("*") if p.is_file() and p.suffix in (".css", ".js"))
EVERY_FILE = PAGES + OWN_STATIC

ABSOLUTE = re.compile(r"\b(?:https?|ftp|wss?):", re.IGNORECASE)
# "//host/..." in an attribute, a CSS url() or a JS string: the browser would fetch it elsewhere.
PROTOCOL_RELATIVE = re.compile(r"""(?:=\s*|url\(\s*|["'(]\s*)["']?//[^\s/*]""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"@import", re.IGNORECASE)
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
STYLE_ATTRIBUTE = re.compile(r"""[\s"']style\s*=""", re.IGNORECASE)
STYLE_ELEMENT = re.compile(r"<style\b", re.IGNORECASE)
HANDLER = re.compile(r"""[\s"'](?:on[a-z]+|hx-on[:\-][\w:-]*)\s*=""", re.IGNORECASE)
JS_URL = re.compile(r"javascript:", re.IGNORECASE)


def test_there_is_something_to_check() -> None:
    names = {p.name for p in EVERY_FILE}
    assert {"base.html", "inbox.html", "thread.html", "console.css", "console.js"} <= names
    assert any(p.parent == VENDOR for p in OWN_STATIC)


@pytest.mark.parametrize("path", EVERY_FILE, ids=lambda p: p.name)
def test_only_local_urls(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # JS comments ("// ...") are not URLs: drop them from the console's own script before looking.
    if path.suffix == ".js" and path.parent != VENDOR:
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    assert not ABSOLUTE.findall(text), f"{path.name}: an absolute URL"
    assert not PROTOCOL_RELATIVE.findall(text), f"{path.name}: a protocol-relative URL"
    assert not CSS_IMPORT.findall(text), f"{path.name}: @import"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_templates_obey_the_csp(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for attributes, body in SCRIPT.findall(text):
        assert "src=" in attributes and not body.strip(), f"{path.name}: an inline <script>"
    assert not STYLE_ATTRIBUTE.findall(text), f"{path.name}: a style= attribute"
    assert not STYLE_ELEMENT.findall(text), f"{path.name}: a <style> element"
    assert not HANDLER.findall(text), f"{path.name}: an inline event handler"
    assert not JS_URL.findall(text), f"{path.name}: a javascript: URL"


def test_the_checks_catch_what_they_are_for() -> None:
    bad = {
        ABSOLUTE: '<script src="https://cdn.example/htmx.js"></script>',
        PROTOCOL_RELATIVE: '<link href="//fonts.example/x.css">',
        STYLE_ATTRIBUTE: '<p style="color:red">',
        HANDLER: '<button onclick="go()">',
    }
    for pattern, text in bad.items():
        assert pattern.findall(text), pattern.pattern
    assert HANDLER.findall('<div hx-on:click="x()">')
    ((attributes, body),) = SCRIPT.findall("<script>alert(1)</script>")
    assert body and "src=" not in attributes
    assert not PROTOCOL_RELATIVE.findall("var a = 1; // a comment\n.//*[@x]")


def test_every_template_compiles() -> None:
    env = templates()
    install_filters(env)  # (what gateway.console.inbox adds when its routes are added)
    for path in PAGES:
        env.get_template(path.name)


def test_vendored_files_match_their_recorded_sha256() -> None:
    table = (VENDOR / "VENDORED.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`([^`]+)`[^\n]*\|\s*`([0-9a-f]{64})`\s*\|\s*$", table, re.MULTILINE)
    assert rows, "VENDORED.md lists no file with its sha256"
    for name, digest in rows:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    listed = {name for name, _ in rows}
    shipped = {p.name for p in VENDOR.iterdir() if p.suffix in (".js", ".css", ".woff2", ".woff")}
    assert shipped == listed, "every vendored script/style/font is in VENDORED.md"
    # base.html loads exactly the vendored htmx.
    assert templates().globals["htmx"] == f"/static/vendor/{next(n for n in listed if n.startswith('htmx-'))}"
