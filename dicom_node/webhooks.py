"""Webhooks: a JSON POST per series event ([[webhooks]]), never in the pipeline's way.

`Webhooks.notify(event, series_uid)` only puts the event in each interested receiver's bounded queue
(a full queue drops the new event, counted and logged); one thread per receiver builds the payload
from the ledger's read model and POSTs it, retrying connection errors, timeouts, 408, 425, 429 and
5xx with exponential backoff up to `max_attempts`, and giving up at once on any other answer. A
slow or dead receiver therefore delays only its own later events. Events still queued when the
node stops are not sent (the ledger keeps every series' state; `dicom-node list` shows them).

The payload carries UIDs, state, reason, counts, timings, destinations, rule and backend; patient
data (name, ID, birth date, read from the series' first file) only with `[web] show_patient_data`.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import pydicom
from prometheus_client import Counter

from dicom_node.config import WebhookSection
from dicom_node.ledger.queries import SeriesView
from dicom_node.ratelog import RateLimitedLog
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429})
GET_TIMEOUT_S = 0.5
USER_AGENT = "dicom-synth-node-webhook"

Payload = Callable[[str, str], dict[str, Any] | None]
"""payload(event, series_uid): the JSON body for an event, or None when the series is gone."""


def event_payload(event: str, view: SeriesView, *, node_ae: str, now: float,
                  patient: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON body of one event, from the series' ledger view (no patient data unless given)."""
    body: dict[str, Any] = {
        "event": event, "node": node_ae, "sent_at": now,
        "series_uid": view.series_uid, "study_uid": view.study_uid, "derived_series_uid": view.derived_series_uid,
        "state": view.state, "reason": view.reason, "detail": view.detail, "calling_ae": view.calling_ae,
        "rule": view.rule, "backend": view.backend,
        "series_description": view.series_description, "convolution_kernel": view.convolution_kernel,
        "slice_thickness_mm": view.slice_thickness_mm,
        "counts": {"instances": view.instance_count, "duplicates": view.duplicate_count,
                   "derived": view.derived_count},
        "timings": {"first_received_at": view.first_received_at, "last_received_at": view.last_received_at,
                    "finished_at": view.updated_at, "receive_s": view.receive_seconds,
                    "synthesis_s": view.synth_seconds, "total_s": view.total_seconds},
        "destinations": [{"name": j.destination, "state": j.state, "sent": j.sent, "total": j.total,
                          "attempts": j.attempts, "last_status": j.last_status} for j in view.sends]
                        or [{"name": name, "state": "not_sent"} for name in view.route_destinations],
    }
    if patient is not None:
        body["patient"] = patient
    return body


def patient_fields(spool: Spool, series_uid: str) -> dict[str, str] | None:
    """Patient name, ID and birth date from a series' first held file (webhooks with show_patient_data)."""
    files = spool.instance_files(series_uid)
    if not files:
        return None
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True,
                             specific_tags=["PatientName", "PatientID", "PatientBirthDate"])
    except Exception:  # a file we cannot read: the event goes without them
        return None
    return {"name": str(ds.get("PatientName", "")), "id": str(ds.get("PatientID", "")),
            "birth_date": str(ds.get("PatientBirthDate", ""))}


def _opener(hook: WebhookSection) -> urllib.request.OpenerDirector:
    """No proxies (the node reads no environment), no redirects (a POST is not re-sent elsewhere)."""
    context = ssl.create_default_context(cafile=hook.ca_file or None)

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
                                       _NoRedirect())


def post(hook: WebhookSection, body: bytes, event: str,
         opener: urllib.request.OpenerDirector | None = None) -> tuple[bool, bool, str]:
    """One POST: (delivered, worth retrying, what happened)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Dicom-Node-Event": event}
    if hook.token:
        headers["Authorization"] = f"Bearer {hook.token}"
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with (opener or _opener(hook)).open(request, timeout=hook.timeout_s) as response:
            return True, False, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, exc.code in RETRY_STATUSES or exc.code >= 500, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:   # refused, reset, timed out, TLS
        reason = getattr(exc, "reason", exc)
        return False, True, f"{type(exc).__name__}: {reason}"[:200]


class Receiver:
    """One webhook URL: its queue and its delivery thread."""

    def __init__(self, hook: WebhookSection, payload: Payload, *, delivered: Counter, sleep_event: threading.Event,
                 clock: Callable[[], float] = time.time) -> None:
        self.hook, self._payload, self._counter, self._clock = hook, payload, delivered, clock
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=hook.queue_size)
        self._stop = sleep_event
        self._opener = _opener(hook)
        self._log = RateLimitedLog(logger)
        self._thread: threading.Thread | None = None
        for result in ("delivered", "failed", "dropped"):
            self._counter.labels(hook.label, result)

    def put(self, event: str, series_uid: str) -> None:
        if event not in self.hook.events:
            return
        try:
            self.queue.put_nowait((event, series_uid))
        except queue.Full:
            self._counter.labels(self.hook.label, "dropped").inc()
            self._log.warning(f"full:{self.hook.label}", "webhook %s: queue full (%d events); %s of series %s "
                              "dropped", self.hook.label, self.hook.queue_size, event, series_uid)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"webhook-{self.hook.label}", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event, series_uid = self.queue.get(timeout=GET_TIMEOUT_S)
            except queue.Empty:
                continue
            try:
                self.deliver(event, series_uid)
            except Exception:  # the worker's boundary: one bad event never ends the thread
                logger.exception("webhook %s: %s of series %s not sent", self.hook.label, event, series_uid)
                self._counter.labels(self.hook.label, "failed").inc()

    def deliver(self, event: str, series_uid: str) -> bool:
        """Build and POST one event, retrying with backoff; True when the receiver took it."""
        payload = self._payload(event, series_uid)
        if payload is None:
            logger.warning("webhook %s: series %s is no longer in the ledger; %s not sent", self.hook.label,
                           series_uid, event)
            return False
        body = json.dumps(payload).encode()
        hook, delay = self.hook, self.hook.retry_initial_s
        for attempt in range(1, hook.max_attempts + 1):
            ok, retry, what = post(hook, body, event, self._opener)
            if ok:
                self._counter.labels(hook.label, "delivered").inc()
                logger.info("webhook %s: %s of series %s delivered (%s, attempt %d)", hook.label, event,
                            series_uid, what, attempt)
                return True
            if not retry or attempt == hook.max_attempts or self._stop.is_set():
                break
            logger.warning("webhook %s: %s of series %s: %s; retrying in %.1f s", hook.label, event, series_uid,
                           what, delay)
            if self._stop.wait(delay):
                break
            delay = min(hook.retry_max_s, delay * 2)
        self._counter.labels(hook.label, "failed").inc()
        logger.error("webhook %s: gave up on %s of series %s after %d attempt(s): %s", hook.label, event,
                     series_uid, attempt, what)
        return False


class Webhooks:
    """Every [[webhooks]] receiver; `notify` is safe to call from any thread and never blocks."""

    def __init__(self, hooks: Sequence[WebhookSection], payload: Payload, *, delivered: Counter) -> None:
        self._stop = threading.Event()
        self.receivers = [Receiver(h, payload, delivered=delivered, sleep_event=self._stop) for h in hooks]

    def notify(self, event: str, series_uid: str) -> None:
        for receiver in self.receivers:
            receiver.put(event, series_uid)

    def start(self) -> None:
        self._stop.clear()
        for receiver in self.receivers:
            receiver.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for receiver in self.receivers:
            receiver.join(timeout_s / max(1, len(self.receivers)))
            if (left := receiver.queue.qsize()):
                logger.warning("webhook %s: %d queued event(s) not sent (the node stopped)", receiver.hook.label,
                               left)
