"""STOW-RS request bodies and response judging (dicom_node.senders.stow); no sockets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP

import pytest

from dicom_node.senders.stow import (
    StowResponse,
    StowResponseError,
    judge,
    multipart_body,
    parse_response,
    retry_after_seconds,
)
from tests.support.stow_server import store_response

SENT = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]


def test_multipart_body_is_multipart_related_with_one_part_per_instance() -> None:
    parts = [b"DICM-one\r\n--x", b"two", b""]
    body, content_type = multipart_body(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=DICOMNODE')
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    got = [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]
    assert got == [("application/dicom", part) for part in parts]


def test_an_empty_body_only_closes() -> None:
    body, content_type = multipart_body([])
    boundary = content_type.rsplit("boundary=", 1)[1]
    assert body == f"--{boundary}--\r\n".encode()


def test_parse_orthanc_style_response() -> None:
    raw = json.dumps({"00081190": {"vr": "UR", "Value": ["http://x/studies/1"]}, "00081198": {"vr": "SQ"},
                      **store_response(SENT[:2], warning=0xB000)}).encode()
    parsed = parse_response(raw)
    assert parsed.referenced == ("1.2.3.1", "1.2.3.2")
    assert parsed.failed == ()
    assert parsed.warnings == (("1.2.3.1", 0xB000), ("1.2.3.2", 0xB000))


def test_parse_failures_and_other_failures_and_a_list_of_one() -> None:
    body = store_response([SENT[0]], failed=SENT[1:], reason=0xA700)
    body["0008119A"] = {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0xC000]}}]}
    parsed = parse_response(json.dumps([body]).encode())
    assert parsed.failed == (("1.2.3.2", 0xA700), ("1.2.3.3", 0xA700))
    assert parsed.other_failures == (0xC000,)
    assert parse_response(b"{}").referenced is None


@pytest.mark.parametrize(("raw", "message"), [
    (b"<NativeDicomModel/>", r"not JSON"),
    (b"[1, 2]", r"expected one DICOM JSON dataset, got list"),
    (b'{"00081198": {"vr": "UI", "Value": ["x"]}}', r"\(0008,1198\) is not a sequence"),
    (b'{"00081199": {"vr": "SQ", "Value": ["x"]}}', r"\(0008,1199\) items are not datasets"),
])
def test_bad_bodies_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(StowResponseError, match=message):
        parse_response(raw)


def _body(stored: list[str], failed: list[str] = (), reason: int = 0x0110) -> StowResponse:  # type: ignore[assignment]
    return parse_response(json.dumps(store_response(stored, failed, reason)).encode())


def test_200_with_every_instance_referenced_is_ok() -> None:
    outcome = judge(200, _body(SENT), SENT)
    assert (outcome.stored, outcome.failed, outcome.status, outcome.error) == (tuple(SENT), (), "ok", "")


def test_200_without_a_body_counts_every_instance() -> None:
    assert judge(200, None, SENT).stored == tuple(SENT)


def test_202_with_failures_is_retried() -> None:
    outcome = judge(202, _body(SENT[:1], SENT[1:], 0xA700), SENT)
    assert outcome.stored == ("1.2.3.1",) and outcome.failed == ("1.2.3.2", "1.2.3.3")
    assert (outcome.status, outcome.retry, outcome.stop) == ("failure-0xA700", True, False)
    assert outcome.error == "HTTP 202: 2 of 3 instance(s) failed (Failure Reason 0xA700)"


def test_409_is_not_retried_but_the_next_request_goes() -> None:
    outcome = judge(409, _body([], SENT), SENT)
    assert (outcome.stored, outcome.status, outcome.retry, outcome.stop) == ((), "http-409", False, False)
    assert outcome.error == "HTTP 409 (conflict: none stored): 3 of 3 instance(s) not stored, Failure Reason 0x0110"


def test_400_with_a_body_counts_what_it_says_was_stored() -> None:
    outcome = judge(400, _body(SENT[:2]), SENT)          # Orthanc: a bad part among good ones
    assert outcome.stored == ("1.2.3.1", "1.2.3.2") and outcome.failed == ("1.2.3.3",)
    assert not outcome.retry


@pytest.mark.parametrize(("status", "retry", "stop"), [
    (401, False, True), (403, False, True), (404, False, True), (413, False, True), (415, False, True),
    (301, False, True), (400, False, False), (422, False, False),
    (408, True, False), (429, True, True), (500, True, False), (502, True, False), (503, True, True),
])
def test_http_status_decides_retry(status: int, retry: bool, stop: bool) -> None:
    outcome = judge(status, None, SENT)
    assert (outcome.stored, outcome.status, outcome.retry, outcome.stop) == ((), f"http-{status}", retry, stop)


def test_instances_the_response_does_not_mention_are_not_stored() -> None:
    outcome = judge(200, _body(SENT[:2]), SENT)
    assert outcome.failed == ("1.2.3.3",) and outcome.status == "unacknowledged"
    assert "1 of 3 instance(s) missing from the response's Referenced SOP Sequence" in outcome.error


def test_uids_we_did_not_send_are_ignored() -> None:
    outcome = judge(200, _body([*SENT, "9.9.9"], ["8.8.8"]), SENT)
    assert outcome.status == "ok" and outcome.stored == tuple(SENT)


def test_a_202_without_a_body_does_not_say_what_was_stored() -> None:
    outcome = judge(202, None, SENT)
    assert (outcome.stored, outcome.status, outcome.retry) == ((), "unacknowledged", True)
    assert outcome.error == ("HTTP 202: 3 of 3 instance(s) missing from the response's body "
                             "(no Store Instances Response)")


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("", 0.0), (None, 0.0), ("soon", 0.0), ("-5", 0.0),
    ("Wed, 02 Dec 2026 12:01:30 GMT", 90.0), ("Wed, 02 Dec 2026 11:00:00 GMT", 0.0),
])
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, seconds: float) -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now) == seconds


def test_a_busy_server_stops_the_attempt_and_its_retry_after_is_kept() -> None:
    outcome = judge(503, None, SENT, retry_after_s=30.0)
    assert (outcome.retry, outcome.stop, outcome.retry_after_s) == (True, True, 30.0)
    assert outcome.error.endswith("it asked to wait 30 s (Retry-After)")
    refused = judge(400, None, SENT, retry_after_s=30.0)            # not retried: nothing to wait for
    assert (refused.retry, refused.retry_after_s) == (False, 0.0)
    assert "Retry-After" not in refused.error
