"""The node's dashboard and JSON API (Starlette, server-rendered Jinja2 pages), health and metrics.

The web sees a running node only through its `dicom_node.operations.Operations`: reads through the
ledger's read model (`dicom_node.ledger.queries`), actions through `dicom_node.admin`. Everything that
needs a thread lives in `server.WebServer`; `app.build_app(ops)` is a plain ASGI app that tests drive
with Starlette's TestClient.
"""
