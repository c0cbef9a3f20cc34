"""AssociationGuard: pending caps per address and in all, slots, places freed on close or thread end,
refusals counted and their log lines throttled."""

from __future__ import annotations

import logging

import pytest

from dicom_node.assocguard import (
    AssociationGuard,
    AssociationLimits,
    Refusal,
    SlotUsage,
    TicketState,
)
from dicom_node.config import NodeSection

LIMITS = AssociationLimits(max_associations=2, max_pending=3, max_pending_per_address=2, request_timeout_s=5.0,
                           pdu_timeout_s=30.0, max_pdu=1 << 20, max_dataset_bytes=64 << 20, message_timeout_s=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAssoc:
    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


def guard_with(refusals: list[str] | None = None) -> tuple[AssociationGuard, Clock]:
    clock = Clock()
    sink = refusals if refusals is not None else []
    return AssociationGuard(LIMITS, on_refused=sink.append, clock=clock), clock


def started(guard: AssociationGuard, host: str = "10.0.0.1") -> FakeAssoc:
    ticket = guard.admit(host, 4000)
    assert ticket is not None
    assoc = FakeAssoc()
    guard.bind(ticket, assoc)
    ticket.started = True
    return assoc


def test_pending_connections_are_capped_per_address_and_in_all() -> None:
    refusals: list[str] = []
    guard, _ = guard_with(refusals)
    assert guard.admit("10.0.0.1", 1) is not None and guard.admit("10.0.0.1", 2) is not None
    assert guard.admit("10.0.0.1", 3) is None                    # this address has its two
    assert guard.admit("10.0.0.2", 1) is not None                # another address is not crowded out
    assert guard.admit("10.0.0.3", 1) is None                    # three pending in all
    assert refusals == ["pending_cap", "pending_cap"]
    assert guard.usage() == SlotUsage(active=0, pending=3, max_associations=2)


def test_a_closed_pending_connection_frees_its_place_when_its_thread_ends() -> None:
    guard, _ = guard_with()
    first = started(guard)
    assert guard.admit("10.0.0.1", 2) is not None
    first_ticket = guard.ticket_of(first)
    assert first_ticket is not None
    first_ticket.close()                                         # the peer went; pynetdicom's thread still waits
    assert guard.admit("10.0.0.1", 3) is None
    first.alive = False                                          # ... until it ends: now the place is free
    assert guard.admit("10.0.0.1", 3) is not None
    assert guard.usage().pending == 2


def test_open_connections_are_capped_at_every_slot_and_every_pending_place() -> None:
    refusals: list[str] = []
    guard, _ = guard_with(refusals)                              # 2 slots + 3 pending places = 5 open
    for i in range(5):
        assoc = started(guard, f"10.0.1.{i}")
        guard.request(assoc)                                     # 2 take a slot, 3 are refused: closing
    assert guard.usage() == SlotUsage(active=2, pending=0, max_associations=2)
    assert guard.admit("10.0.2.1", 1) is None                    # the refused ones' threads still run
    assert refusals == ["connection_cap"]
    assert LIMITS.max_open == 5


def test_slots_are_taken_on_request_and_freed_when_the_socket_or_the_thread_ends() -> None:
    guard, _ = guard_with()
    a, b = started(guard), started(guard, "10.0.0.2")
    assert guard.request(a) is None and guard.request(b) is None
    assert guard.usage() == SlotUsage(active=2, pending=0, max_associations=2)
    c = started(guard, "10.0.0.3")
    assert guard.request(c) == SlotUsage(active=2, pending=0, max_associations=2)   # full: refuse
    assert guard.usage().full
    ticket_a = guard.ticket_of(a)
    assert ticket_a is not None
    ticket_a.close()                                             # a's socket closed: its slot is free at once
    assert guard.usage().active == 1 and guard.active_associations() == [b]
    b.alive = False                                              # b's thread ended without closing
    assert guard.usage() == SlotUsage(active=0, pending=0, max_associations=2)
    assert guard.active_associations() == []


def test_a_connection_that_was_admitted_but_not_started_still_holds_its_place() -> None:
    guard, _ = guard_with()
    ticket = guard.admit("10.0.0.1", 1)
    assert ticket is not None
    assoc = FakeAssoc()
    assoc.alive = False                                          # made, its thread not started yet
    guard.bind(ticket, assoc)
    assert guard.usage().pending == 1
    ticket.started = True                                        # started, and already over
    assert guard.usage().pending == 0


def test_finish_releases_a_rejected_association_before_its_socket_closes() -> None:
    guard, _ = guard_with()
    assoc = started(guard)
    assert guard.request(assoc) is None
    guard.finish(assoc)
    assert guard.usage().active == 0


def test_closing_past_the_deadline_is_a_request_deadline_refusal(caplog: pytest.LogCaptureFixture) -> None:
    refusals: list[str] = []
    guard, clock = guard_with(refusals)
    early, late = guard.admit("10.0.0.1", 1), guard.admit("10.0.0.2", 1)
    assert early is not None and late is not None
    clock.now += 1.0
    early.close()                                                # the peer went away: no refusal
    clock.now += 4.0
    assert late.remaining_s() == 0.0
    with caplog.at_level(logging.WARNING, logger="dicom_node.assocguard"):
        late.close()
    assert refusals == ["request_deadline"]
    assert ("refused connection from 10.0.0.2:1 (request_deadline): no complete A-ASSOCIATE-RQ within 5 s "
            "(node.association_request_timeout_s)") in caplog.text
    assert late.closed and late.state is TicketState.PENDING and late.gone()   # never started: nothing holds it
    assert guard.usage().pending == 0


def test_refusal_log_lines_are_throttled_per_reason_and_address(caplog: pytest.LogCaptureFixture) -> None:
    refusals: list[str] = []
    guard, clock = guard_with(refusals)
    with caplog.at_level(logging.WARNING, logger="dicom_node.assocguard"):
        for port in range(5):
            guard.note_refusal(Refusal.PDU_TOO_LARGE, f"10.0.0.9:{port}", "too long")
        guard.note_refusal(Refusal.PDU_TOO_LARGE, "10.0.0.8:1", "too long")      # another address: logged
        clock.now += 1.0
        guard.note_refusal(Refusal.PDU_TOO_LARGE, "10.0.0.9:7", "too long")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused connection from 10.0.0.9:0 (pdu_too_large): too long",
                     "refused connection from 10.0.0.8:1 (pdu_too_large): too long",
                     "refused connection from 10.0.0.9:7 (pdu_too_large): too long "
                     "(4 similar in the last 1 s)"]
    assert refusals == ["pdu_too_large"] * 7                     # every one is counted


def test_shut_closes_pending_connections_or_all() -> None:
    guard, _ = guard_with()
    shut: list[str] = []
    pending = guard.admit("10.0.0.1", 1)
    assert pending is not None
    pending.closer = lambda: shut.append("pending")
    active_assoc = started(guard, "10.0.0.2")
    assert guard.request(active_assoc) is None
    active = guard.ticket_of(active_assoc)
    assert active is not None
    active.closer = lambda: shut.append("active")
    assert guard.shut(pending=True) == 1 and shut == ["pending"]
    assert guard.shut(pending=False) == 2 and shut == ["pending", "pending", "active"]


def test_limits_from_config_and_the_pynetdicom_ceiling() -> None:
    cfg = NodeSection().updated(max_associations=40, max_pending=100, max_pending_per_address=10, max_dataset_mb=2,
                      max_pdu=0, association_request_timeout_s=3.0, pdu_read_timeout_s=9.0, dimse_timeout_s=20.0)
    limits = AssociationLimits.from_config(cfg)
    assert (limits.max_pdu, limits.max_dataset_bytes, limits.request_timeout_s, limits.pdu_timeout_s,
            limits.message_timeout_s) == (1 << 20, 2 << 20, 3.0, 9.0, 20.0)
    assert limits.max_open == 140 and limits.pynetdicom_ceiling == 2 * 140


@pytest.mark.parametrize(("change", "message"), [
    ({"max_associations": 0}, r"association limits must be positive"),
    ({"pdu_timeout_s": 0.0}, r"association timeouts must be positive"),
])
def test_limits_validate(change: dict[str, float], message: str) -> None:
    values = {**{f: getattr(LIMITS, f) for f in LIMITS.__dataclass_fields__}, **change}
    with pytest.raises(ValueError, match=message):
        AssociationLimits(**values)
