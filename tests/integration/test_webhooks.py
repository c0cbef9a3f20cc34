"""Webhooks against a real local HTTP receiver (http.server in a thread) that is slow, down or answers 500:
retried with backoff in their own worker, bounded, never in the pipeline's way; no patient data."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from dicom_node.config import WebhookSection
from dicom_node.ledger.queries import SeriesView
from dicom_node.webhooks import Receiver, Webhooks, event_payload
from tests.integration.conftest import CollectingSCP, NodeFactory, send_series, wait_until
from tests.support.ct_series import make_ct_series
from tests.support.webhook_receiver import HookReceiver


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    r = HookReceiver()
    yield r
    r.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


VIEW = SeriesView(series_uid="1.2.3", study_uid="1.2", state="done", reason="", detail="", calling_ae="CT01",
                  instance_count=4, duplicate_count=0, first_received_at=10.0, last_received_at=12.0,
                  updated_at=20.0, deadline_at=None, derived_series_uid="2.25.7", derived_count=16,
                  synth_seconds=1.5, sends=(), rule="r1", route_destinations=("pacs",), backend="interpolation",
                  series_description="CHEST 5mm", convolution_kernel="B", slice_thickness_mm=5.0)


def counter() -> Counter:
    return Counter("hooks", "test", ["webhook", "result"], registry=CollectorRegistry())


def make_receiver(url: str, stop: threading.Event, **keys: Any) -> tuple[Receiver, Counter]:
    hook = WebhookSection(url=url, **{"retry_initial_s": 0.05, "retry_max_s": 0.2, "timeout_s": 1.0, **keys})
    c = counter()
    payload = lambda event, uid: event_payload(event, VIEW, node_ae="SYNTHNODE", now=30.0)  # noqa: E731
    return Receiver(hook, payload, delivered=c, sleep_event=stop), c


def value(c: Counter, label: str, result: str) -> float:
    return float(c.labels(label, result)._value.get())


def test_a_receiver_answering_500_gets_the_event_again_with_backoff(receiver: HookReceiver) -> None:
    receiver.statuses = [500, 503]
    worker, c = make_receiver(receiver.url, threading.Event(), token="t0ken")
    started = time.monotonic()
    assert worker.deliver("done", "1.2.3")
    assert len(receiver.requests) == 3 and time.monotonic() - started >= 0.05 + 0.1
    headers, body = receiver.requests[-1]
    assert headers["Authorization"] == "Bearer t0ken" and headers["Content-Type"] == "application/json"
    assert body["event"] == "done" and body["series_uid"] == "1.2.3" and body["rule"] == "r1"
    assert body["counts"] == {"instances": 4, "duplicates": 0, "derived": 16}
    assert body["destinations"] == [{"name": "pacs", "state": "not_sent"}]
    assert body["timings"]["total_s"] == 10.0 and "patient" not in body
    assert value(c, worker.hook.label, "delivered") == 1


def test_a_client_error_is_not_retried(receiver: HookReceiver) -> None:
    receiver.statuses = [404]
    worker, c = make_receiver(receiver.url, threading.Event())
    assert not worker.deliver("done", "1.2.3")
    assert len(receiver.requests) == 1 and value(c, worker.hook.label, "failed") == 1


def test_a_receiver_that_is_down_is_tried_max_attempts_then_given_up() -> None:
    worker, c = make_receiver(f"http://127.0.0.1:{closed_port()}/hook", threading.Event(), max_attempts=3)
    started = time.monotonic()
    assert not worker.deliver("failed", "1.2.3")
    assert 0.05 + 0.1 <= time.monotonic() - started < 5.0
    assert value(c, worker.hook.label, "failed") == 1


def test_a_slow_receiver_times_out_is_retried_and_never_blocks_notify(receiver: HookReceiver) -> None:
    receiver.delay_s = 1.0                            # each POST takes longer than timeout_s
    hook = WebhookSection(url=receiver.url, timeout_s=0.2, retry_initial_s=0.05, retry_max_s=0.1, max_attempts=2,
                          queue_size=2)
    c = counter()
    hooks = Webhooks([hook], lambda event, uid: {"event": event, "series_uid": uid}, delivered=c)
    hooks.start()
    try:
        started = time.monotonic()
        for i in range(6):                            # the first is taken by the worker, two wait, the rest drop
            hooks.notify("done", f"1.2.{i}")
            time.sleep(0.01 if i == 0 else 0)
        assert time.monotonic() - started < 0.2       # notify never waits for the receiver
        wait_until(lambda: value(c, hook.label, "dropped") >= 3, timeout_s=5, what="dropped events")
        wait_until(lambda: value(c, hook.label, "failed") >= 1, timeout_s=10, what="a timed-out event given up")
        assert value(c, hook.label, "dropped") == 3
    finally:
        hooks.stop(timeout_s=3.0)
    assert len(receiver.requests) >= 2               # the receiver got it each time, but answered too late


def test_events_not_asked_for_are_not_sent(receiver: HookReceiver) -> None:
    worker, _ = make_receiver(receiver.url, threading.Event(), events=["failed"])
    worker.put("done", "1.2.3")
    assert worker.queue.qsize() == 0


# -- the node end to end -------------------------------------------------------------------------
def test_the_node_posts_done_and_no_rule_without_patient_data(node_factory: NodeFactory, pacs: CollectingSCP,
                                                               receiver: HookReceiver) -> None:
    receiver.statuses = [500]                           # the first POST fails: retried, the pipeline goes on
    node = node_factory(pacs=pacs, extra={
        "rules": [{"name": "ct01", "match": {"CallingAE": "^CT01$"}, "destinations": ["pacs"]}],
        "webhooks": [{"url": receiver.url, "token": "abc", "retry_initial_s": 0.1, "retry_max_s": 0.2,
                      "events": ["done", "no_rule"]}]})
    routed = make_ct_series(slices=4, rows=16, cols=16, seed=1, patient_id="PIDSECRET")
    unrouted = make_ct_series(slices=4, rows=16, cols=16, seed=2, patient_id="PIDSECRET")
    assert node.scp is not None
    assert send_series(routed, node.scp.port, calling_ae="CT01") == [0] * 4
    assert send_series(unrouted, node.scp.port, calling_ae="CT02") == [0] * 4
    wait_until(lambda: len({b["event"] for b in receiver.bodies()}) == 2, timeout_s=30, what="both events")
    by_event = {b["event"]: b for b in receiver.bodies()}
    done, no_rule = by_event["done"], by_event["no_rule"]
    assert done["series_uid"] == str(routed[0].SeriesInstanceUID) and done["state"] == "done"
    assert done["rule"] == "ct01" and done["backend"] == "interpolation" and done["calling_ae"] == "CT01"
    assert [d["name"] for d in done["destinations"]] == ["pacs"] and done["destinations"][0]["state"] == "done"
    assert done["counts"]["derived"] == 16 and done["slice_thickness_mm"] == 5.0
    assert no_rule["series_uid"] == str(unrouted[0].SeriesInstanceUID) and no_rule["reason"] == "no_rule"
    assert "CallingAE 'CT02' does not match '^CT01$'" in no_rule["detail"]
    text = json.dumps(receiver.bodies())
    assert "PIDSECRET" not in text and "PHANTOM" not in text and "patient" not in text
    assert list(pacs.series()) != [] and len(pacs.series()) == 1     # only the routed series was sent


def test_with_show_patient_data_the_event_carries_it(node_factory: NodeFactory, receiver: HookReceiver) -> None:
    node = node_factory(extra={"web": {"token": "tok", "show_patient_data": True},
                               "webhooks": [{"url": receiver.url, "events": ["done"]}]})
    series = make_ct_series(slices=3, rows=16, cols=16, seed=3, patient_id="PID42")
    assert node.scp is not None and send_series(series, node.scp.port) == [0] * 3
    wait_until(lambda: bool(receiver.bodies()), timeout_s=30, what="the done event")
    assert receiver.bodies()[0]["patient"]["id"] == "PID42"


def test_a_destination_that_never_takes_it_gives_a_failed_event(node_factory: NodeFactory, pacs: CollectingSCP,
                                                                 receiver: HookReceiver) -> None:
    pacs.status = 0xA700                                # out of resources, every attempt
    node = node_factory(pacs=pacs, extra={"webhooks": [{"url": receiver.url, "events": ["failed"]}]})
    series = make_ct_series(slices=3, rows=16, cols=16, seed=4)
    assert node.scp is not None and send_series(series, node.scp.port) == [0] * 3
    wait_until(lambda: bool(receiver.bodies()), timeout_s=30, what="the failed event")
    (failed,) = receiver.bodies()
    assert failed["event"] == "failed" and failed["state"] == "failed" and failed["reason"] == "send_failed"
    by_name = {d["name"]: d for d in failed["destinations"]}
    assert by_name["pacs"]["state"] == "failed" and by_name["pacs"]["attempts"] == 3
    assert by_name["pacs"]["last_status"] == "0xA700" and by_name["outbox"]["state"] == "done"
