"""The node's dashboard and JSON API (Starlette, server-rendered Jinja2 pages), health and metrics.

Read-only views query the ledger's tables (`queries`); actions go through the `Ledger`'s own methods
(`actions`). Everything that needs a thread lives in `server.WebServer`; `app.build_app(node)` is a
plain ASGI app that tests drive with Starlette's TestClient.
"""
