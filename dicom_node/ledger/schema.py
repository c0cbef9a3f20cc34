"""The ledger's tables and the values its parts hand on: series, instances, refusals, send jobs, self-checks.

Pixel data stays in files (see `dicom_node.spool`); the ledger holds states, deadlines, leases and
counts. The schema is changed only by Alembic migrations (dicom_node/migrations/).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"            # quiet period over; waiting for the synth worker
    SYNTHESIZING = "synthesizing"
    SENDING = "sending"
    DONE = "done"
    REJECTED = "rejected"            # cannot be processed as received; kept with its reason
    FAILED = "failed"                # processed, but some destination never took it
    NO_RULE = "no_rule"              # [[rules]] exist and none holds; kept with why, removed by retention
    THIN_SERIES_EXISTS = "thin_series_exists"   # skip_if_thin: the PACS already holds a thin CT series


class JobState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (SeriesState.DONE, SeriesState.REJECTED, SeriesState.FAILED, SeriesState.NO_RULE,
            SeriesState.THIN_SERIES_EXISTS)
RETAINED = (SeriesState.DONE, SeriesState.NO_RULE, SeriesState.THIN_SERIES_EXISTS)   # removed by retention


class Base(DeclarativeBase):
    pass


class SeriesRow(Base):
    __tablename__ = "series"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_count: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    processed_generation: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_received_at: Mapped[float] = mapped_column(Float)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    derived_series_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    derived_count: Mapped[int] = mapped_column(Integer, default=0)
    synth_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    updated_at: Mapped[float] = mapped_column(Float)
    # What the rules decided (0004): the winning rule ("" without [[rules]]), its destinations as a JSON
    # list (sending goes only there) and the backend that made (or will make) the derived series.
    rule: Mapped[str] = mapped_column(String(64), default="")
    destinations: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(32), default="")
    # From the series' first instance, for people (0004): not patient data by DICOM's definition.
    series_description: Mapped[str] = mapped_column(String(64), default="")
    convolution_kernel: Mapped[str] = mapped_column(String(64), default="")
    slice_thickness_mm: Mapped[float | None] = mapped_column(Float, nullable=True)


class InstanceRow(Base):
    __tablename__ = "instances"
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)   # of the spool file, to reconcile after a crash


class RefusedRow(Base):
    """An instance refused for lack of space (0xA700) and not stored since: its series waits for it."""

    __tablename__ = "refused_instances"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    refused_at: Mapped[float] = mapped_column(Float, index=True)


class SelfCheckRow(Base):
    """The self-check of one derived volume of a series (one per backend tried), replaced on reprocessing."""

    __tablename__ = "self_checks"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32), primary_key=True)
    consistency_db: Mapped[float] = mapped_column(Float)
    lung_bias_hu: Mapped[float | None] = mapped_column(Float, nullable=True)
    offaxis_psnr_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    offaxis_bis_psnr_db: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    finetune_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    used: Mapped[bool] = mapped_column(Boolean)          # this volume became the derived series
    failure: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[float] = mapped_column(Float)


class SendJobRow(Base):
    __tablename__ = "send_jobs"
    __table_args__ = (UniqueConstraint("series_uid", "destination"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status: Mapped[str] = mapped_column(String(32), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class RecordOutcome(enum.StrEnum):
    NEW = "new"                  # first copy of this instance
    DUPLICATE = "duplicate"      # same SOP Instance UID and same bytes as held
    CHANGED = "changed"          # same SOP Instance UID, different bytes


@dataclass(frozen=True, slots=True)
class SelfCheckRecord:
    """A self-check as the ledger keeps it (dB, HU, seconds; None where not measured)."""

    backend: str
    consistency_db: float
    lung_bias_hu: float | None
    passed: bool
    used: bool                       # this backend's volume is the derived series that was written
    failure: str = ""                # why it failed, "" when it passed
    offaxis_psnr_db: float | None = None
    offaxis_bis_psnr_db: float | None = None
    budget_s: float | None = None
    finetune_s: float | None = None


@dataclass(frozen=True, slots=True)
class SeriesClaim:
    series_uid: str
    study_uid: str
    generation: int
    refused: int = 0          # instances refused (0xA700) and never sent again, after the wait ran out
    calling_ae: str = ""      # of the association that brought the series' first instance (for rules)


@dataclass(frozen=True, slots=True)
class SendClaim:
    job_id: int
    series_uid: str
    destination: str
    derived_series_uid: str
    attempts: int


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What people see of a series beside its UIDs, read from its first instance."""

    description: str = ""
    kernel: str = ""
    thickness_mm: float | None = None


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """What the rules chose for a series: recorded with its outcome, kept across restarts."""

    rule: str                        # "" when no [[rules]] are configured
    destinations: tuple[str, ...]
    backend: str


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float
    max_s: float
    max_attempts: int

    def delay_s(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`, after `attempts` failures (≥ 1)."""
        return float(min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1)))
