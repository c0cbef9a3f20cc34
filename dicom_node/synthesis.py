"""The synthesis stage: a complete series → checked files → volume → rules → thin volume → derived series.

One `step()` claims one series (a lease in the ledger), checks that the disk has room for its
derived series and that the spool still holds every instance the ledger recorded, assembles, finds
the rule that routes it (`dicom_node.routing`; none holds: `no_rule`) and, with
`[series] skip_if_thin`, asks the PACS whether a thin series exists (`thin_series_exists`), then
synthesizes with the rule's backend and self-checks the result (`dicom_node.quality`: fall back to
interpolation or reject by `[synth] on_check_fail`), writes, and records the result with the rule's
destinations and the self-checks. What can go wrong is sorted three ways:

- the series' fault (InvalidSeriesError, SynthesisRefusedError, a failed self-check, any other error
  of the work): the series is kept under rejected/ with its reason;
- the machine's fault (no space, database full, locked or away — `transient.is_transient`): the
  claim goes back to the queue untouched and the stage backs off; nothing is rejected for it;
- not enough room for the derived series: the claim goes back and the stage waits (`StageWait`).

A ledger write that fails (the result, a rejection, a release) is kept and retried before any new
work is claimed, so a full database delays the pipeline but loses nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.assemble import IRREGULAR_SPACING, SPACING_OUT_OF_RANGE, TOO_FEW_SLICES, assemble, read_headers
from dicom_node.config import NodeConfig
from dicom_node.disk import DiskGuard, derived_bytes_estimate
from dicom_node.errors import InvalidSeriesError
from dicom_node.ledger import Ledger, RouteChoice, SelfCheckRecord, SeriesClaim, SeriesFacts, SeriesState
from dicom_node.logcontext import current_series
from dicom_node.metrics import NodeMetrics
from dicom_node.policy import OWN_OUTPUT
from dicom_node.provenance import INTERPOLATION
from dicom_node.quality import QualityCheckError, QualityGate
from dicom_node.routing import NO_RULE, route
from dicom_node.spool import Spool
from dicom_node.stage import PendingWrite, StageWait
from dicom_node.thincheck import THIN_SERIES_EXISTS, find_thin_series
from dicom_node.transient import is_transient
from dicom_node.write import DerivedSeries, write_derived_series
from synth.backends import build_synthesizer
from synth.config import SynthConfig
from synth.seam import SynthesisRefusedError, Synthesizer

logger = logging.getLogger(__name__)

# Reason codes of this stage (the first line of a rejected series' `reason` file).
PROCESSING_ERROR = "processing_error"
NO_INSTANCES = "no_instances"
SPOOL_FILE_MISSING = "spool_file_missing"
SPOOL_FILE_DAMAGED = "spool_file_damaged"
INCOMPLETE_SERIES = "incomplete_series"
# and dicom_node.quality.QUALITY_CHECK_FAILED ("quality_check_failed"): no derived volume passed its self-check
INCOMPLETE_LOOKS = (IRREGULAR_SPACING, TOO_FEW_SLICES)    # what a series with refused instances looks like

IDLE_WAIT_S = 1.0
DISK_RETRY_S = 5.0
DETAIL_MAX = 500


Notify = Callable[[str, str], None]
"""notify(event, series_uid): a series reached a state someone may want to hear of (webhooks)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    facts: SeriesFacts | None = None
    checks: tuple[SelfCheckRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Settled:
    """The series ends here without output: no rule holds, or the PACS already has a thin series."""

    state: SeriesState
    detail: str
    facts: SeriesFacts
    route: RouteChoice | None


@dataclass(frozen=True, slots=True)
class Derived:
    series: DerivedSeries
    facts: SeriesFacts
    route: RouteChoice
    checks: tuple[SelfCheckRecord, ...]
    outcome: Literal["passed", "fallback"]


def _joined(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def series_facts(header: Dataset) -> SeriesFacts:
    """SeriesDescription, ConvolutionKernel and SliceThickness of a series' first instance."""
    raw = header.get("SliceThickness")
    try:
        thickness = float(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    return SeriesFacts(_joined(header.get("SeriesDescription")), _joined(header.get("ConvolutionKernel")),
                       thickness)


class SynthesisStage:
    def __init__(self, cfg: NodeConfig, *, ledger: Ledger, spool: Spool, synthesizer: Synthesizer,
                 disk: DiskGuard, metrics: NodeMetrics, owner: str, clock: Callable[[], float],
                 on_synthesized: Callable[[], None], synthesizers: Mapping[str, Synthesizer] | None = None,
                 notify: Notify | None = None) -> None:
        """`synthesizer` makes series for [synth] backend; `synthesizers` (by backend name) those for the
        rules that name another backend."""
        self._cfg, self._ledger, self._spool = cfg, ledger, spool
        self._synthesizer, self._disk, self._metrics = synthesizer, disk, metrics
        self._synthesizers = {**(synthesizers or {}), cfg.synth.backend: synthesizer}
        self._owner, self._clock, self._on_synthesized = owner, clock, on_synthesized
        self._notify: Notify = notify or (lambda _event, _uid: None)
        self._pending = PendingWrite()
        self._gates = {name: _gate(cfg, s) for name, s in self._synthesizers.items()}
        self._assembly_range = cfg.assembly_spacing_mm()

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
        elif isinstance(outcome, Settled):
            settled = outcome
            self._pending.run(lambda: self._settle(claim, settled))
        else:
            derived, seconds = outcome, time.monotonic() - started
            self._pending.run(lambda: self._record(claim, derived, seconds))

    def _derive(self, claim: SeriesClaim, started: float) -> Derived | Settled | Rejection:
        uid = claim.series_uid
        facts: SeriesFacts | None = None
        try:
            if self._ledger.is_derived_series(uid):
                raise InvalidSeriesError(uid, OWN_OUTPUT, "this series was derived by this node")
            files = self._held_files(uid)
            self._check_room(uid, files)
            datasets = read_headers(files, uid)
            facts = series_facts(datasets[0]) if datasets else None
            volume, source = assemble(datasets, uid, self._cfg.series, spacing_range_mm=self._assembly_range)
            facts = series_facts(source.header)
            decision = self._decide(claim, source.header, facts, spacing_mm=source.spacing_mm)
            if isinstance(decision, Settled):
                return decision
            synthesizer, gate = self._synthesizers[decision.backend], self._gates[decision.backend]
            synth_started = time.monotonic()
            checked = gate.synthesize(volume, series_uid=uid, progress=_log_progress)
            decision = dataclasses.replace(decision, backend=checked.identity.backend)   # what made it (fallback: BIS)
            synth_s = time.monotonic() - synth_started
            derived = write_derived_series(checked.volume, source, identity=checked.identity,
                                           factor=synthesizer.factor, spool=self._spool,
                                           uid_root=self._cfg.node.identity.uid_root,
                                           series_number_offset=self._cfg.series.series_number_offset,
                                           notes=checked.notes)
        except SynthesisRefusedError as exc:
            self._metrics.series.labels("rejected").inc()
            return Rejection(exc.reason, str(exc), facts)
        except QualityCheckError as exc:
            self._metrics.series.labels("rejected").inc()
            self._metrics.observe_checks(exc.checks, "rejected")
            return Rejection(exc.reason, exc.detail[:DETAIL_MAX], facts, exc.checks)
        except InvalidSeriesError as exc:
            self._metrics.series.labels("rejected").inc()
            if claim.refused and exc.reason in INCOMPLETE_LOOKS:
                return Rejection(INCOMPLETE_SERIES, f"{claim.refused} instance(s) were refused for lack of disk "
                                 f"space (0xA700) and not sent again within series.refused_wait_s; {exc.detail}",
                                 facts)
            return Rejection(exc.reason, exc.detail, facts)
        outcome: Literal["passed", "fallback"] = "fallback" if checked.fallback_reason else "passed"
        self._metrics.synth_seconds.observe(synth_s)
        self._metrics.series.labels("derived").inc()
        self._metrics.observe_checks(checked.checks, outcome)
        if checked.fallback_reason:
            logger.warning("series %s: %s", uid, checked.fallback_reason)
        logger.info("series %s: %d slices at %.2f mm -> %d slices at %.2f mm in %.1f s (%s%s; %s; %.1f s in all)",
                    uid, volume.shape[0], volume.spacing_mm[0], derived.count, checked.volume.spacing_mm[0], synth_s,
                    checked.identity.backend, f", rule {decision.rule}" if decision.rule else "",
                    checked.check.summary(), time.monotonic() - started)
        return Derived(derived, facts, decision, checked.checks, outcome)

    def _decide(self, claim: SeriesClaim, header: Dataset, facts: SeriesFacts, *,
                spacing_mm: float) -> RouteChoice | Settled:
        """The rule that routes the series (or `no_rule`), its backend's spacing range, then skip_if_thin
        (or `thin_series_exists`)."""
        if not self._cfg.rules:
            choice = RouteChoice("", tuple(self._cfg.destination_names()), self._cfg.synth.backend)
        else:
            routing = route(self._cfg.rules, header, claim.calling_ae)
            if routing.rule is None:
                self._metrics.series.labels(NO_RULE).inc()
                return Settled(SeriesState.NO_RULE, f"no rule holds: {routing.no_rule_detail()}"[:DETAIL_MAX],
                               facts, None)
            choice = RouteChoice(routing.rule.name, routing.rule.destinations,
                                 routing.rule.backend or self._cfg.synth.backend)
        if (refusal := self._cfg.spacing_refusal(choice.backend, spacing_mm)) is not None:
            raise InvalidSeriesError(claim.series_uid, SPACING_OUT_OF_RANGE, refusal)
        skip = self._cfg.series.skip_if_thin
        if skip is None or header.get("Modality") != "CT":
            return choice
        dest = next(d for d in self._cfg.destinations if d.name == skip.destination)
        answer = find_thin_series(dest, calling_ae=self._cfg.node.identity.ae_title, study_uid=claim.study_uid,
                                  max_thickness_mm=skip.max_thickness_mm, timeout_s=skip.timeout_s,
                                  is_ours=lambda uid: uid == claim.series_uid or self._ledger.is_derived_series(uid))
        if answer.error:
            logger.warning("series %s: skip_if_thin: no answer from %s (%s); processing it", claim.series_uid,
                           skip.destination, answer.error)
            return choice
        if not answer.thin_series_uid:
            logger.info("series %s: skip_if_thin: %s holds no thin CT series of the study (%d series seen)",
                        claim.series_uid, skip.destination, answer.series_seen)
            return choice
        self._metrics.series.labels(THIN_SERIES_EXISTS).inc()
        return Settled(SeriesState.THIN_SERIES_EXISTS,
                       f"{skip.destination} holds CT series {answer.thin_series_uid} of this study at "
                       f"{answer.thickness_mm:g} mm (series.skip_if_thin.max_thickness_mm = {skip.max_thickness_mm:g})",
                       facts, choice)

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
        self._ledger.reject_series(claim, self._owner, rejection.reason, rejection.detail, self._clock(),
                                   facts=rejection.facts, checks=rejection.checks)
        logger.error("series %s rejected (%s): %s", claim.series_uid, rejection.reason, rejection.detail)
        self._notify("rejected", claim.series_uid)

    def _settle(self, claim: SeriesClaim, settled: Settled) -> None:
        """no_rule / thin_series_exists: the files stay where they are (retention removes them)."""
        if self._ledger.series_settled(claim, owner=self._owner, state=settled.state, reason=str(settled.state),
                                       detail=settled.detail, now=self._clock(), facts=settled.facts,
                                       route=settled.route):
            logger.warning("series %s: %s: %s", claim.series_uid, settled.state, settled.detail)
            self._notify(str(settled.state), claim.series_uid)

    def _record(self, claim: SeriesClaim, derived: Derived, seconds: float) -> None:
        settled = self._ledger.series_synthesized(
            claim, owner=self._owner, derived_series_uid=derived.series.series_uid, derived_count=derived.series.count,
            destinations=list(derived.route.destinations), synth_seconds=seconds, now=self._clock(),
            facts=derived.facts, route=derived.route, checks=derived.checks)
        self._on_synthesized()
        if settled is not None:
            self._notify(settled, claim.series_uid)


def _gate(cfg: NodeConfig, synthesizer: Synthesizer) -> QualityGate:
    """The self-check around one backend; interpolation (same factor) is its fallback, unless it is one."""
    fallback = None if synthesizer.identity.backend == INTERPOLATION else build_synthesizer(
        SynthConfig(backend=INTERPOLATION, factor=synthesizer.factor))
    return QualityGate(cfg.self_check, synthesizer=synthesizer, fallback=fallback)


def _log_progress(done: int, total: int) -> None:
    logger.debug("synthesis %d/%d", done, total)
