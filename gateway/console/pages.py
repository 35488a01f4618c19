"""Every page module's routes on the console app (`gateway.console.app.make_console_app`)."""

from __future__ import annotations

from aiohttp import web

from gateway.console import admin, auth, events, inbox, status, thread


def add_routes(app: web.Application) -> None:
    auth.add_routes(app)  # /login, /logout, /password
    inbox.add_routes(app)  # /, /inbox/...
    thread.add_routes(app)  # /threads/{id}...
    events.add_routes(app)  # /events (server-sent events)
    status.add_routes(app)  # /status, /reports/...
    admin.add_routes(app)  # /admin/accounts, /admin/audit
