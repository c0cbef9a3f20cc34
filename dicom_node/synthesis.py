"""The synthesis stage: a complete series → checked files → volume → thin volume → derived series.

One `step()` claims one series (a lease in the ledger), checks that the disk has room for its
derived series and that the spool still holds every instance the ledger recorded, assembles,
synthesizes, writes, and records the result. What can go wrong is sorted three ways:

- the series' fault (InvalidSeriesError, SynthesisRefusedError, any other error of the work):
  the series is kept under rejected/ with its reason;
- the machine's fault (no space, database full, locked or away — `transient.is_transient`): the
  claim goes back to the queue untouched and the stage backs off; nothing is rejected for it;
- not enough room for the derived series: the claim goes back and the stage waits (`StageWait`).

A ledger write that fails (the result, a rejection, a release) is kept and retried before any new
work is claimed, so a full database delays the pipeline but loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicom_node.assemble import IRREGULAR_SPACING, TOO_FEW_SLICES, assemble, read_headers
from dicom_node.config import NodeConfig
from dicom_node.disk import DiskGuard, derived_bytes_estimate
from dicom_node.errors import InvalidSeriesError
from dicom_node.ledger import Ledger, SeriesClaim
from dicom_node.logcontext import current_series
from dicom_node.metrics import NodeMetrics
from dicom_node.policy import OWN_OUTPUT
from dicom_node.spool import Spool
from dicom_node.stage import PendingWrite, StageWait
from dicom_node.transient import is_transient
from dicom_node.write import DerivedSeries, write_derived_series
from synth.seam import SynthesisRefusedError, Synthesizer

logger = logging.getLogger(__name__)

# Reason codes of this stage (the first line of a rejected series' `reason` file).
PROCESSING_ERROR = "processing_error"
NO_INSTANCES = "no_instances"
SPOOL_FILE_MISSING = "spool_file_missing"
SPOOL_FILE_DAMAGED = "spool_file_damaged"
INCOMPLETE_SERIES = "incomplete_series"
INCOMPLETE_LOOKS = (IRREGULAR_SPACING, TOO_FEW_SLICES)    # what a series with refused instances looks like

IDLE_WAIT_S = 1.0
DISK_RETRY_S = 5.0
DETAIL_MAX = 500


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


class SynthesisStage:
    def __init__(self, cfg: NodeConfig, *, ledger: Ledger, spool: Spool, synthesizer: Synthesizer,
                 disk: DiskGuard, metrics: NodeMetrics, owner: str, clock: Callable[[], float],
                 on_synthesized: Callable[[], None]) -> None:
        self._cfg, self._ledger, self._spool = cfg, ledger, spool
        self._synthesizer, self._disk, self._metrics = synthesizer, disk, metrics
        self._owner, self._clock, self._on_synthesized = owner, clock, on_synthesized
        self._pending = PendingWrite()

    def step(self) -> float | None:
        self._pending.run()
        claim = self._ledger.claim_series(self._owner, self._clock(), self._cfg.database.lease_s)
        if claim is None:
            return IDLE_WAIT_S
        token = current_series.set(claim.series_uid)
        try:
            self._process(claim)
        finally:
            current_series.reset(token)
        return None

    # -- one series ------------------------------------------------------------------------------
    def _process(self, claim: SeriesClaim) -> None:
        started = time.monotonic()
        try:
            outcome = self._derive(claim, started)
        except StageWait:
            self._pending.run(lambda: self._release(claim))
            raise
        except Exception as exc:
            if is_transient(exc):
                self._pending.run(lambda: self._release(claim))
                raise
            logger.exception("series %s failed in processing", claim.series_uid)
            self._metrics.series.labels("error").inc()
            outcome = Rejection(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"[:DETAIL_MAX])
        if isinstance(outcome, Rejection):
            rejection = outcome
            self._pending.run(lambda: self._reject(claim, rejection))
        else:
            derived, seconds = outcome, time.monotonic() - started
            self._pending.run(lambda: self._record(claim, derived, seconds))

    def _derive(self, claim: SeriesClaim, started: float) -> DerivedSeries | Rejection:
        uid = claim.series_uid
        try:
            if self._ledger.is_derived_series(uid):
                raise InvalidSeriesError(uid, OWN_OUTPUT, "this series was derived by this node")
            files = self._held_files(uid)
            self._check_room(uid, files)
            volume, source = assemble(read_headers(files, uid), uid, self._cfg.series,
                                      spacing_range_mm=self._cfg.synth.spacing_range_mm)
            synth_started = time.monotonic()
            thin = self._synthesizer(volume, progress=_log_progress)
            synth_s = time.monotonic() - synth_started
            derived = write_derived_series(thin, source, identity=self._synthesizer.identity,
                                           factor=self._synthesizer.factor, spool=self._spool,
                                           uid_root=self._cfg.node.identity.uid_root,
                                           series_number_offset=self._cfg.series.series_number_offset)
        except SynthesisRefusedError as exc:
            self._metrics.series.labels("rejected").inc()
            return Rejection(exc.reason, str(exc))
        except InvalidSeriesError as exc:
            self._metrics.series.labels("rejected").inc()
            if claim.refused and exc.reason in INCOMPLETE_LOOKS:
                return Rejection(INCOMPLETE_SERIES, f"{claim.refused} instance(s) were refused for lack of disk "
                                 f"space (0xA700) and not sent again within series.refused_wait_s; {exc.detail}")
            return Rejection(exc.reason, exc.detail)
        self._metrics.synth_seconds.observe(synth_s)
        self._metrics.series.labels("derived").inc()
        logger.info("series %s: %d slices at %.2f mm -> %d slices at %.2f mm in %.1f s (%s; %.1f s in all)", uid,
                    volume.shape[0], volume.spacing_mm[0], derived.count, thin.spacing_mm[0], synth_s,
                    self._synthesizer.identity.backend, time.monotonic() - started)
        return derived

    def _held_files(self, uid: str) -> list[Path]:
        """The spool's files of a series, checked against what the ledger recorded (count and size)."""
        files = self._spool.instance_files(uid)
        recorded = self._ledger.instance_sizes(uid)
        if not files and not recorded:
            raise InvalidSeriesError(uid, NO_INSTANCES, "no instance files are held for this series")
        held = {path.stem: path for path in files}
        missing = sorted(set(recorded) - set(held))
        if missing:
            raise InvalidSeriesError(uid, SPOOL_FILE_MISSING,
                                     f"{len(missing)} of {len(recorded)} recorded instance file(s) are missing "
                                     f"from the spool (first: {missing[0]}); send the series again")
        damaged = sorted(sop for sop, size in recorded.items() if held[sop].stat().st_size != size)
        if damaged:
            raise InvalidSeriesError(uid, SPOOL_FILE_DAMAGED,
                                     f"{len(damaged)} instance file(s) changed size on disk since they were "
                                     f"received (first: {damaged[0]}); send the series again")
        return files

    def _check_room(self, uid: str, files: list[Path]) -> None:
        room = self._disk.room_for(derived_bytes_estimate(files, self._synthesizer.factor))
        if not room.fits:
            raise StageWait("disk", f"series {uid} needs about {room.needed_bytes / 1e6:.0f} MB for its derived "
                            f"series; {max(0, room.free_bytes) / 1e6:.0f} MB are free below the "
                            f"{self._disk.watermark:.0%} watermark", DISK_RETRY_S)

    # -- ledger writes, retried until they land --------------------------------------------------
    def _release(self, claim: SeriesClaim) -> None:
        if self._ledger.release_series(claim, self._owner, self._clock()):
            logger.info("series %s back in the queue", claim.series_uid)

    def _reject(self, claim: SeriesClaim, rejection: Rejection) -> None:
        self._spool.reject(claim.series_uid, rejection.reason, rejection.detail)
        self._ledger.reject_series(claim, self._owner, rejection.reason, rejection.detail, self._clock())
        logger.error("series %s rejected (%s): %s", claim.series_uid, rejection.reason, rejection.detail)

    def _record(self, claim: SeriesClaim, derived: DerivedSeries, seconds: float) -> None:
        self._ledger.series_synthesized(claim, self._owner, derived.series_uid, derived.count,
                                        self._cfg.destination_names(), seconds, self._clock())
        self._on_synthesized()


def _log_progress(done: int, total: int) -> None:
    logger.debug("synthesis %d/%d", done, total)
