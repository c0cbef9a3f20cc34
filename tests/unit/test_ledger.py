from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from dicom_node.ledger import BackoffPolicy, JobState, Ledger, RecordOutcome, SeriesState
from dicom_node.spool import StoredInstance
from tests.support.ledger import deadline, new_ledger, record, view

QUIET = 10.0
POLICY = BackoffPolicy(initial_s=30, max_s=600, max_attempts=3)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return new_ledger(tmp_path / "state.db")


def synthesized(ledger: Any, claim: Any, destinations: list[str]) -> None:
    ledger.series_synthesized(claim, owner="w1", derived_series_uid="2.25.1", derived_count=6,
                              destinations=destinations, synth_seconds=1.0, now=200.0)


def finished(ledger: Any, job: Any, sent: int, status: str, error: str, *, ok: bool, now: float) -> Any:
    return ledger.send_finished(job, owner="s", sent=sent, status=status, error=error, ok=ok, policy=POLICY, now=now)


def stored(sop: str, series: str = "1.2.3", digest: str = "d") -> StoredInstance:
    return StoredInstance("1.2", series, sop, Path("x"), 1, digest)


def state_of(ledger: Ledger, series: str = "1.2.3") -> str:
    summary = view(ledger, series)
    assert summary is not None
    return summary.state


def complete_and_claim(ledger: Ledger, now: float = 100.0, owner: str = "w1"):  # type: ignore[no-untyped-def]
    record(ledger, stored("1.2.3.1"), now, QUIET)
    record(ledger, stored("1.2.3.2"), now, QUIET)
    assert ledger.complete_due(now + QUIET) == ["1.2.3"]
    claim = ledger.claim_series(owner, now + QUIET, 60)
    assert claim is not None
    return claim


def test_deadline_moves_with_each_instance_and_survives_reopen(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "state.db")
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    record(ledger, stored("1.2.3.2"), 105.0, QUIET)
    assert ledger.complete_due(114.0) == []
    reopened = new_ledger(tmp_path / "state.db")       # a restart keeps the deadline
    assert deadline(reopened, "1.2.3") == 115.0
    assert reopened.complete_due(115.0) == ["1.2.3"]
    assert state_of(reopened) == SeriesState.COMPLETE


def test_duplicate_changed_and_new_instances(ledger: Ledger) -> None:
    assert record(ledger, stored("1.2.3.1"), 1.0, QUIET) is RecordOutcome.NEW
    assert record(ledger, stored("1.2.3.1"), 2.0, QUIET) is RecordOutcome.DUPLICATE
    assert record(ledger, stored("1.2.3.1", digest="e"), 3.0, QUIET) is RecordOutcome.CHANGED
    summary = view(ledger, "1.2.3")
    assert summary is not None and summary.instance_count == 1


def test_one_batch_with_the_same_instance_twice_and_two_series(ledger: Ledger) -> None:
    batch = [(stored("1.2.3.1"), 1.0, "MOD"), (stored("1.2.3.1"), 2.0, "MOD"),
             (stored("1.2.3.1", digest="e"), 3.0, "MOD"), (stored("1.2.3.2"), 4.0, "MOD"),
             (stored("1.2.4.1", series="1.2.4"), 5.0, "MOD")]
    assert ledger.record_instances(batch, QUIET) == [RecordOutcome.NEW, RecordOutcome.DUPLICATE, RecordOutcome.CHANGED,
                                                     RecordOutcome.NEW, RecordOutcome.NEW]
    first, second = view(ledger, "1.2.3"), view(ledger, "1.2.4")
    assert first is not None and second is not None
    assert (first.instance_count, second.instance_count) == (2, 1)
    assert deadline(ledger, "1.2.3") == 4.0 + QUIET
    assert ledger.record_instances([(stored("1.2.3.2"), 6.0, "MOD")], QUIET) == [RecordOutcome.DUPLICATE]


def test_a_series_is_claimed_once(ledger: Ledger) -> None:
    complete_and_claim(ledger)
    assert ledger.claim_series("w2", 200.0, 60) is None
    assert state_of(ledger) == SeriesState.SYNTHESIZING


def test_concurrent_claims_never_share_a_series(ledger: Ledger) -> None:
    for i in range(20):
        record(ledger, stored("1.2.9.1", series=f"1.2.9.{i}"), 0.0, 1.0)
    ledger.complete_due(5.0)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claim := ledger.claim_series(name, 5.0, 60)) is not None:
            with lock:
                claimed.append(claim.series_uid)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"1.2.9.{i}" for i in range(20))


def test_send_jobs_retry_with_backoff_then_fail(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, ["pacs", "outbox"])
    assert state_of(ledger) == SeriesState.SENDING
    out = ledger.claim_send("outbox", "s", 200.0, 60)
    assert out is not None
    finished(ledger, out, 6, "ok", "", ok=True, now=200.0)
    now = 200.0
    for attempt in range(1, 4):
        job = ledger.claim_send("pacs", "s", now, 60)
        assert job is not None and job.attempts == attempt - 1
        state = finished(ledger, job, 0, "0xA700", "out of resources", ok=False, now=now)
        if attempt < 3:
            assert state is JobState.PENDING
            assert ledger.claim_send("pacs", "s", now + POLICY.delay_s(attempt) - 1, 60) is None
            now += POLICY.delay_s(attempt)
    assert state is JobState.FAILED
    summary = view(ledger, "1.2.3")
    assert summary is not None and summary.state == SeriesState.FAILED and summary.reason == "send_failed"
    assert {j.destination: (j.state, j.last_status) for j in summary.sends} == {
        "outbox": ("done", "ok"), "pacs": ("failed", "0xA700")}
    assert ledger.retry("1.2.3", now) == "re-queued 1 failed send(s)"
    assert ledger.claim_send("pacs", "s", now, 60) is not None


def test_a_destinations_retry_after_delays_the_next_try_up_to_the_maximum_backoff(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, ["pacs"])
    now = 200.0
    for asked, waited in ((90.0, 90.0), (10.0, POLICY.delay_s(2)), (5000.0, POLICY.max_s)):
        job = ledger.claim_send("pacs", "s", now, 60)
        assert job is not None
        state = ledger.send_finished(job, owner="s", sent=0, status="http-503", error="busy", ok=False,
                                     policy=BackoffPolicy(30, 600, 10), now=now, retry_after_s=asked)
        assert state is JobState.PENDING
        assert ledger.claim_send("pacs", "s", now + waited - 1, 60) is None
        now += waited


def test_backoff_doubles_to_a_cap() -> None:
    policy = BackoffPolicy(30, 600, 10)
    assert [policy.delay_s(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]


def test_all_sends_done_means_done(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, ["pacs"])
    job = ledger.claim_send("pacs", "s", 200.0, 60)
    assert job is not None
    finished(ledger, job, 6, "ok", "", ok=True, now=201.0)
    assert state_of(ledger) == SeriesState.DONE
    assert ledger.is_derived_series("2.25.1") and not ledger.is_derived_series("1.2.3")


def test_resend_after_done_changes_nothing_but_new_instance_reopens(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, [])
    assert state_of(ledger) == SeriesState.DONE
    record(ledger, stored("1.2.3.1"), 300.0, QUIET)
    assert state_of(ledger) == SeriesState.DONE
    record(ledger, stored("1.2.3.3"), 300.0, QUIET)
    assert state_of(ledger) == SeriesState.RECEIVING
    assert ledger.complete_due(310.0) == ["1.2.3"]


def test_instance_arriving_during_synthesis_reprocesses_afterwards(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    record(ledger, stored("1.2.3.9"), 150.0, QUIET)
    synthesized(ledger, claim, [])
    assert state_of(ledger) == SeriesState.RECEIVING


def test_expired_and_dead_owner_leases_are_reclaimed(ledger: Ledger) -> None:
    complete_and_claim(ledger, owner="host:123:abc")
    assert ledger.reclaim_expired(150.0) == 0                 # lease runs to 170
    assert ledger.lease_owners() == {"host:123:abc"}
    assert ledger.release_owner("host:123:abc", 150.0) == 1
    assert state_of(ledger) == SeriesState.COMPLETE
    claim = ledger.claim_series("w2", 150.0, 60)
    assert claim is not None
    assert ledger.reclaim_expired(211.0) == 1
    assert state_of(ledger) == SeriesState.COMPLETE


def test_a_worker_that_lost_its_lease_cannot_record(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    ledger.release_owner("w1", 150.0)
    synthesized(ledger, claim, ["pacs"])
    assert state_of(ledger) == SeriesState.COMPLETE


def test_retry_of_rejected_and_refusals(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    ledger.reject_series(claim, "w1", "gantry_tilt", "12 degrees", 200.0)
    summary = view(ledger, "1.2.3")
    assert summary is not None and (summary.state, summary.reason) == ("rejected", "gantry_tilt")
    assert ledger.retry("1.2.3", 201.0) == "queued for processing again"
    with pytest.raises(ValueError, match=r"is complete; only failed, no_rule, rejected or thin_series_exists "
                                         r"series can be retried"):
        ledger.retry("1.2.3", 202.0)
    with pytest.raises(KeyError, match=r"no series 9.9 in the ledger"):
        ledger.retry("9.9", 202.0)


def test_resend_requeues_a_done_series(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, ["pacs", "outbox"])
    for dest in ("pacs", "outbox"):
        job = ledger.claim_send(dest, "s", 200.0, 60)
        assert job is not None
        finished(ledger, job, 6, "ok", "", ok=True, now=200.0)
    assert state_of(ledger) == SeriesState.DONE
    assert ledger.resend("1.2.3", 300.0, destination="pacs") == "re-queued 1 send(s)"
    assert state_of(ledger) == SeriesState.SENDING
    assert ledger.claim_send("outbox", "s", 300.0, 60) is None
    assert ledger.claim_send("pacs", "s", 300.0, 60) is not None
    with pytest.raises(ValueError, match=r"is sending; only done or failed series can be re-sent"):
        ledger.resend("1.2.3", 301.0)


def test_migrations_match_the_models(ledger: Ledger) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dicom_node.ledger import Base

    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_purge_done_and_discard(ledger: Ledger) -> None:
    claim = complete_and_claim(ledger)
    synthesized(ledger, claim, [])
    assert ledger.purge_done(150.0) == []
    assert ledger.purge_done(201.0) == [("1.2.3", "2.25.1")]
    assert view(ledger, "1.2.3") is None
    claim = complete_and_claim(ledger)
    ledger.reject_series(claim, "w1", "not_axial", "coronal", 300.0)
    assert ledger.purge_done(1e9) == []                 # rejected work is never purged by age
    assert ledger.discard("1.2.3") == ""
    with pytest.raises(KeyError, match=r"no series 1.2.3"):
        ledger.discard("1.2.3")


def test_heartbeat_extends_every_lease_of_an_owner(ledger: Ledger) -> None:
    complete_and_claim(ledger)                       # lease until 170
    assert ledger.renew_owner("w1", 165.0, 60) == 1  # now until 225
    assert ledger.reclaim_expired(200.0) == 0
    assert ledger.renew_owner("nobody", 165.0, 60) == 0


def test_instance_arriving_before_the_worker_starts_extends_the_quiet_period(ledger: Ledger) -> None:
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    assert ledger.complete_due(110.0) == ["1.2.3"]
    record(ledger, stored("1.2.3.1"), 111.0, QUIET)     # a duplicate changes nothing
    assert state_of(ledger) == SeriesState.COMPLETE
    record(ledger, stored("1.2.3.2"), 112.0, QUIET)     # a new slice: wait again
    assert state_of(ledger) == SeriesState.RECEIVING
    assert ledger.complete_due(121.0) == [] and ledger.complete_due(122.0) == ["1.2.3"]


def test_a_series_waits_for_instances_refused_for_lack_of_space(ledger: Ledger) -> None:
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    ledger.record_instances([], QUIET, refusals=[("1.2.3", "1.2.3.2", 101.0)])
    assert ledger.complete_due(200.0, refused_wait_s=600.0) == []        # quiet long over; still waiting
    assert state_of(ledger) == SeriesState.RECEIVING
    record(ledger, stored("1.2.3.2"), 300.0, QUIET)              # the refused instance comes again
    assert ledger.complete_due(300.0 + QUIET, refused_wait_s=600.0) == ["1.2.3"]
    claim = ledger.claim_series("w1", 320.0, 60)
    assert claim is not None and claim.refused == 0


def test_the_wait_for_refused_instances_runs_out(ledger: Ledger) -> None:
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    ledger.record_instances([], QUIET, refusals=[("1.2.3", "1.2.3.2", 101.0), ("1.2.3", "1.2.3.3", 102.0)])
    assert ledger.complete_due(700.0, refused_wait_s=600.0) == []
    assert ledger.complete_due(702.5, refused_wait_s=600.0) == ["1.2.3"]
    claim = ledger.claim_series("w1", 703.0, 60)
    assert claim is not None and claim.refused == 2


def test_a_refused_resend_of_a_held_instance_is_not_waited_for(ledger: Ledger) -> None:
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    ledger.record_instances([], QUIET, refusals=[("1.2.3", "1.2.3.1", 101.0)])
    assert ledger.complete_due(120.0, refused_wait_s=600.0) == ["1.2.3"]


def test_a_refusal_reopens_a_complete_series_not_yet_taken(ledger: Ledger) -> None:
    record(ledger, stored("1.2.3.1"), 100.0, QUIET)
    assert ledger.complete_due(110.0) == ["1.2.3"]
    ledger.record_instances([], QUIET, refusals=[("1.2.3", "1.2.3.2", 111.0)])
    assert state_of(ledger) == SeriesState.RECEIVING
    assert ledger.claim_series("w1", 112.0, 60) is None
