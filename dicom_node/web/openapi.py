"""The JSON API's OpenAPI 3.1 description, written by hand (served at /api/openapi.json).

`tests/unit/test_web_api.py` checks that every /api route the app serves is described here and
that what the endpoints return has the properties the schemas require.
"""

from __future__ import annotations

from typing import Any

import dicom_node
from dicom_node.config import WebSection
from dicom_node.ledger.queries import MAX_LIMIT, MAX_OFFSET, SERIES_STATES

_UID = {"type": "string", "pattern": r"^[0-9.]{1,64}$", "description": "a DICOM UID"}
_TIME = {"type": "number", "description": "seconds since the Unix epoch"}
_NTIME = {"type": ["number", "null"], "description": "seconds since the Unix epoch, or null"}
_NSECONDS = {"type": ["number", "null"], "description": "seconds, or null when not known yet"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                 "schema": {"type": "integer", "minimum": 1}}}
_LOCKED = {"description": "too many failed logins or bearer tokens from this address (web.auth_max_failures "
                          "within web.auth_window_s): every credential it sends is refused unread until the "
                          "lockout ends", "headers": _RETRY_AFTER,
           "content": {"application/json": {"schema": _ref("Error")}}}
_ERRORS = {
    "401": _json(_ref("Error"), "not logged in, or a wrong bearer token"),
    "403": _json(_ref("Error"), "actions are disabled (web.token is empty) or the CSRF token is missing"),
    "429": _LOCKED,
}
_TOO_LARGE = {"413": _json(_ref("Error"), "the request body is larger than web.max_body_bytes "
                                          f"(default {WebSection().max_body_bytes})")}
_SERIES_PARAM = {"name": "series_uid", "in": "path", "required": True, "schema": _UID,
                 "description": "the source SeriesInstanceUID as received"}
_DESTINATION_PARAM = {"name": "destination", "in": "query", "required": False, "schema": {"type": "string"},
                      "description": "re-send to this configured destination only (default: every destination); "
                                     "a `destination` in the JSON body wins over this"}
_ACTION_RESPONSES = {
    "200": _json(_ref("ActionResult"), "done"),
    "400": _json(_ref("Error"), 'the body is not JSON, or not an object like {"destination": "pacs"}'),
    "404": _json(_ref("Error"), "no such series"),
    "409": _json(_ref("Error"), "the series is in a state that does not allow this action, "
                                "or no destination of that name is configured"),
    **_TOO_LARGE,
    **_ERRORS,
}
_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}]


def _action(summary: str, description: str, *, destination: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": description, "parameters": [_SERIES_PARAM],
                          "security": _SECURED, "responses": _ACTION_RESPONSES, "tags": ["actions"]}
    if destination:
        op["parameters"] = [_SERIES_PARAM, _DESTINATION_PARAM]
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"destination": {
                "type": ["string", "null"], "description": "re-send to this configured destination only"}}}}}}
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Send": {
        "type": "object",
        "required": ["destination", "state", "attempts", "sent", "total", "last_status", "last_error",
                     "next_attempt_at", "updated_at"],
        "properties": {
            "series_uid": _UID,
            "destination": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "sending", "done", "failed"]},
            "attempts": {"type": "integer"},
            "sent": {"type": "integer", "description": "instances the destination took in the last attempt"},
            "total": {"type": "integer"},
            "last_status": {"type": "string", "description": "ok, a DIMSE status such as 0xA700, or an error kind"},
            "last_error": {"type": "string"},
            "next_attempt_at": _TIME,
            "updated_at": _TIME,
        },
    },
    "SelfCheck": {
        "type": "object",
        "description": "the derived volume thickened again with the input's slice profile, against the input",
        "required": ["backend", "consistency_db", "lung_bias_hu", "passed", "used", "failure"],
        "properties": {
            "backend": {"type": "string"},
            "consistency_db": {"type": "number", "description": "PSNR, HU window -1024..2048 (peak 3072 HU)"},
            "lung_bias_hu": {"type": ["number", "null"], "description": "mean HU in the lungs, derived minus "
                             "input; null when no lungs were found"},
            "passed": {"type": "boolean"},
            "used": {"type": "boolean", "description": "this volume became the derived series"},
            "failure": {"type": "string", "description": "why it failed; empty when it passed"},
            "offaxis_psnr_db": {"type": ["number", "null"], "description": "the backend's off-axis validation"},
            "offaxis_bis_psnr_db": {"type": ["number", "null"], "description": "BIS on the same held-out images"},
            "budget_s": _NSECONDS,
            "finetune_s": _NSECONDS,
        },
    },
    "Series": {
        "type": "object",
        "required": ["series_uid", "state", "reason", "instance_count", "derived_series_uid", "derived_count",
                     "sends", "first_received_at", "updated_at"],
        "properties": {
            "series_uid": _UID,
            "study_uid": _UID,
            "state": {"type": "string", "enum": list(SERIES_STATES)},
            "reason": {"type": "string", "description": "machine-readable rejection or failure reason"},
            "detail": {"type": "string"},
            "calling_ae": {"type": "string"},
            "instance_count": {"type": "integer"},
            "duplicate_count": {"type": "integer"},
            "first_received_at": _TIME,
            "last_received_at": _TIME,
            "updated_at": _TIME,
            "deadline_at": _NTIME,
            "derived_series_uid": {"type": "string"},
            "derived_count": {"type": "integer"},
            "synth_seconds": _NSECONDS,
            "receive_seconds": {"type": "number"},
            "total_seconds": _NSECONDS,
            "sends": {"type": "array", "items": _ref("Send")},
            "checks": {"type": "array", "items": _ref("SelfCheck"), "description": "self-checks, the one sent first"},
            "rule": {"type": "string", "description": "the [[rules]] entry that routed it (empty without rules)"},
            "route_destinations": {"type": "array", "items": {"type": "string"},
                                   "description": "the destinations the rule chose (sending goes only there)"},
            "backend": {"type": "string", "description": "the synthesis backend that made the derived series"},
            "series_description": {"type": "string", "description": "SeriesDescription of the first instance"},
            "convolution_kernel": {"type": "string", "description": "ConvolutionKernel of the first instance"},
            "slice_thickness_mm": {"type": ["number", "null"], "description": "SliceThickness of the first instance"},
            "previews": {"type": "object", "description": "PNG URLs, present on the single-series endpoint",
                         "additionalProperties": {"type": "string"}},
            "header": {"type": ["object", "null"], "description": "non-identifying DICOM attributes"},
            "patient": {"type": ["object", "null"],
                        "description": "patient attributes; only with web.show_patient_data and a login"},
        },
    },
    "SeriesList": {
        "type": "object", "required": ["total", "limit", "offset", "series"],
        "properties": {"total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
                       "series": {"type": "array", "items": _ref("Series")}},
    },
    "Destination": {
        "type": "object", "required": ["name", "kind", "target", "counts", "active", "failed"],
        "properties": {
            "name": {"type": "string"}, "kind": {"type": "string", "enum": ["dicom", "folder", "dicomweb"]},
            "target": {"type": "string"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "active": {"type": "array", "items": _ref("Send"), "description": "pending and sending jobs"},
            "failed": {"type": "array", "items": _ref("Send")},
        },
    },
    "Overview": {
        "type": "object",
        "required": ["node", "model", "disk", "series_by_state", "sends_by_destination", "throughput", "ready"],
        "properties": {
            "node": {"type": "object"}, "model": {"type": "object"}, "disk": {"type": "object"},
            "series_by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
            "sends_by_destination": {"type": "object"},
            "throughput": {"type": "object", "description": "last hour and last 24 hours"},
            "ready": {"type": "boolean"},
            "checks": {"type": "array", "items": _ref("Check")},
        },
    },
    "Check": {"type": "object", "required": ["name", "ok", "detail"],
              "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"}}},
    "Ready": {"type": "object", "required": ["ready", "checks", "reasons"],
              "properties": {"ready": {"type": "boolean"}, "checks": {"type": "array", "items": _ref("Check")},
                             "reasons": {"type": "array", "items": {"type": "string"}}}},
    "CheckResult": {"type": "object", "required": ["destination", "ok", "message", "elapsed_ms"],
                    "properties": {"destination": {"type": "string"}, "ok": {"type": "boolean"},
                                   "message": {"type": "string"}, "elapsed_ms": {"type": "number"}}},
    "ActionResult": {"type": "object", "required": ["series_uid", "action", "message"],
                     "properties": {"series_uid": _UID, "action": {"type": "string"}, "message": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/api/overview": {"get": {
        "summary": "Node, model and device, disk, queue depths per stage and destination, throughput",
        "tags": ["read"], "responses": {"200": _json(_ref("Overview"), "the overview"), **_ERRORS}}},
    "/api/series": {"get": {
        "summary": "Series, most recently changed first", "tags": ["read"],
        "parameters": [
            {"name": "state", "in": "query", "required": False, "schema": SCHEMAS["Series"]["properties"]["state"]},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}},
            {"name": "offset", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
        ],
        "responses": {"200": _json(_ref("SeriesList"), "a page of series"),
                      "400": _json(_ref("Error"), "a bad parameter: an unknown state, or limit or offset out "
                                                  "of range or not an integer (the message names it)"),
                      **_ERRORS}}},
    "/api/series/{series_uid}": {"get": {
        "summary": "One series: state, reason, timings, destination results, preview URLs", "tags": ["read"],
        "parameters": [_SERIES_PARAM],
        "responses": {"200": _json(_ref("Series"), "the series"), "404": _json(_ref("Error"), "no such series"),
                      **_ERRORS}}},
    "/api/series/{series_uid}/preview/{which}/{view}.png": {"get": {
        "summary": "A lung-window section through the thick input or the derived 1-mm output", "tags": ["read"],
        "parameters": [
            _SERIES_PARAM,
            {"name": "which", "in": "path", "required": True,
             "schema": {"type": "string", "enum": ["input", "output"]}},
            {"name": "view", "in": "path", "required": True,
             "schema": {"type": "string", "enum": ["coronal", "sagittal"]}},
        ],
        "responses": {"200": {"description": "the image", "content": {"image/png": {}}},
                      "404": _json(_ref("Error"), "no such series, or its files are gone"),
                      "422": _json(_ref("Error"), "the files cannot be drawn"),
                      "503": {"description": "the renderer is busy (one render at a time, a few queued; "
                                             "web.preview_wait_s): try again after Retry-After",
                              "headers": _RETRY_AFTER, "content": {"application/json": {"schema": _ref("Error")}}},
                      **_ERRORS}}},
    "/api/destinations": {"get": {
        "summary": "Each destination with its pending and failed sends", "tags": ["read"],
        "responses": {"200": _json({"type": "array", "items": _ref("Destination")}, "the destinations"),
                      **_ERRORS}}},
    "/api/series/{series_uid}/retry": {"post": _action(
        "Retry", "Re-queue the failed sends of a failed series, or process a rejected series again.")},
    "/api/series/{series_uid}/resend": {"post": _action(
        "Re-send", "Send the derived series of a done or failed series again, to every destination or to the "
        "one named by `destination` (query parameter or JSON body).", destination=True)},
    "/api/series/{series_uid}/discard": {"post": _action(
        "Discard", "Remove a done, failed or rejected series from the ledger, with its received and derived files.")},
    "/api/destinations/{name}/check": {"post": {
        "summary": "Check a destination",
        "description": "C-ECHO a DICOM destination (with the node's AE title), check that a folder "
                       "destination is writable, or send an empty STOW-RS request (no instance) to a "
                       "DICOMweb destination. Changes nothing.",
        "tags": ["actions"], "security": _SECURED,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("CheckResult"), "checked (see ok)"),
                      "404": _json(_ref("Error"), "no such destination"), **_TOO_LARGE, **_ERRORS}}},
    "/api/openapi.json": {"get": {"summary": "This document", "tags": ["meta"],
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dicom-synth-node API",
            "version": dicom_node.__version__,
            "description": (
                "Read the node's state and act on series. Reading needs no login when web.public_read is "
                "true; actions always need `Authorization: Bearer <web.token>`, or the session cookie from "
                "/login together with its `X-CSRF-Token`. Health: GET /healthz (alive) and /readyz (200 or "
                "503 with reasons). Prometheus metrics: GET /metrics. No patient names, IDs or birth dates "
                "are returned unless web.show_patient_data is true and the caller is logged in. Failed "
                "credentials are counted per client address: after web.auth_max_failures of them the "
                "address gets 429 with Retry-After for every credential it sends, until the lockout ends. "
                "A request body above web.max_body_bytes is refused with 413."),
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "web.token from the config"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "dicom_node_session"},
            },
        },
    }
