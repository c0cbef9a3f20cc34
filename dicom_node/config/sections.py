"""The other tables: [series] (with skip_if_thin), [send], [retention], [database], [web], and the node's part
of [synth] (the self-check policy)."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config.checks import (
    MAX_ATTEMPTS,
    MAX_DONE_DAYS,
    MAX_PERIOD_S,
    MAX_TIMEOUT_S,
    check_float_range,
    check_int_range,
    check_port,
    check_positive_upto,
)


@dataclass(frozen=True, slots=True)
class SkipIfThinSection:
    """[series] skip_if_thin: before synthesis, ask a DIMSE destination (C-FIND, SERIES level) whether the
    study already has a thin CT series; if it does, the series ends as `thin_series_exists`."""

    destination: str                 # a [[destinations]] name (C-FIND goes where C-STORE goes)
    max_thickness_mm: float = 1.5    # a CT series with SliceThickness at or below this is "thin"
    timeout_s: float = 10.0          # association and answer; a PACS that does not answer in time: go on

    def __post_init__(self) -> None:
        check_positive_upto("series.skip_if_thin.max_thickness_mm", self.max_thickness_mm, 100.0, "100 mm")
        check_positive_upto("series.skip_if_thin.timeout_s", self.timeout_s, 120.0, "two minutes")


@dataclass(frozen=True, slots=True)
class SeriesSection:
    quiet_period_s: float = 10.0
    min_spacing_mm: float = 0.0       # deprecated (0 = unset): mapped onto synth.min_input_spacing_mm
    max_spacing_mm: float = 0.0       # deprecated (0 = unset): mapped onto synth.max_input_spacing_mm
    spacing_tolerance: float = 0.05   # relative deviation of one gap from the median gap
    max_tilt_deg: float = 0.5         # angle between the slice normal and the stacking direction
    min_slices: int = 2
    max_slices: int = 2000
    series_number_offset: int = 1000
    refused_wait_s: float = 3600.0    # how long a series waits for instances refused with 0xA700 to come again
    skip_if_thin: SkipIfThinSection | None = None   # parsed by config.load (an inline table)

    def __post_init__(self) -> None:
        check_positive_upto("series.quiet_period_s", self.quiet_period_s, MAX_PERIOD_S, "one day")
        if not 0 <= self.refused_wait_s <= 7 * 86400:
            raise ValueError(f"series.refused_wait_s must be in [0, 604800] s, got {self.refused_wait_s}")
        if self.min_spacing_mm or self.max_spacing_mm:
            lo, hi = self.legacy_spacing_mm
            if not 0 < lo <= hi:
                raise ValueError("series.min_spacing_mm must be positive and not above series.max_spacing_mm, "
                                 f"got {lo} and {hi}")
        if not 0 < self.spacing_tolerance < 0.5:
            raise ValueError(f"series.spacing_tolerance must be in (0, 0.5), got {self.spacing_tolerance}")
        if not 0 <= self.max_tilt_deg < 45:
            raise ValueError(f"series.max_tilt_deg must be in [0, 45), got {self.max_tilt_deg}")
        if not 2 <= self.min_slices <= self.max_slices:
            raise ValueError(f"series.min_slices must be at least 2 and not above series.max_slices, "
                             f"got {self.min_slices} and {self.max_slices}")
        if not 0 <= self.series_number_offset < 100000:
            raise ValueError(f"series.series_number_offset must be in [0, 100000), got "
                             f"{self.series_number_offset}")


    @property
    def legacy_spacing_mm(self) -> tuple[float, float]:
        """The deprecated [series] range, a missing end at its old default (4 and 6 mm)."""
        return (self.min_spacing_mm or LEGACY_SPACING_MM[0], self.max_spacing_mm or LEGACY_SPACING_MM[1])


LEGACY_SPACING_MM = (4.0, 6.0)


CHECK_FAIL_POLICIES = ("fallback", "reject")
MAX_PSNR_DB = 100.0               # what synth.selfcheck reports for identical volumes
MAX_BIAS_HU = 3072.0              # the width of the HU window: a bias cannot be larger


@dataclass(frozen=True, slots=True)
class SelfCheckSection:
    """The self-check policy, written in the [synth] table beside the backend's own keys.

    Defaults from the real series (deploy/README.md, "Self-check"): interpolation gives 40.1-46.5 dB
    and -1.2 to -0.1 HU there; a volume one slice off gives 25.6-30.5 dB, noise 7-9 dB, and lungs
    30 HU too dark give -30 HU.
    """

    min_consistency_db: float = 35.0  # re-thickened output vs input, PSNR; 0 turns this test off
    max_lung_bias_hu: float = 10.0    # |mean HU in the lungs, re-thickened output - input|
    on_check_fail: str = "fallback"   # "fallback": send interpolation instead; "reject": keep the series

    def __post_init__(self) -> None:
        check_float_range("synth.min_consistency_db", self.min_consistency_db, 0.0, MAX_PSNR_DB)
        check_float_range("synth.max_lung_bias_hu", self.max_lung_bias_hu, 0.0, MAX_BIAS_HU)
        if self.on_check_fail not in CHECK_FAIL_POLICIES:
            raise ValueError(f"synth.on_check_fail must be one of {CHECK_FAIL_POLICIES}, got {self.on_check_fail!r}")


@dataclass(frozen=True, slots=True)
class SendSection:
    retry_initial_s: float = 30.0
    retry_max_s: float = 600.0
    max_attempts: int = 10
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ValueError("send.retry_initial_s must be positive and not above send.retry_max_s, "
                             f"got {self.retry_initial_s} and {self.retry_max_s}")
        check_positive_upto("send.retry_max_s", self.retry_max_s, MAX_PERIOD_S, "one day")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"send.max_attempts must be in 1-{MAX_ATTEMPTS}, got {self.max_attempts}")
        check_positive_upto("send.timeout_s", self.timeout_s, MAX_TIMEOUT_S, "one hour")


@dataclass(frozen=True, slots=True)
class RetentionSection:
    done_days: float = 3.0           # finished work is cleaned up this long after it finished
    sweep_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.done_days <= MAX_DONE_DAYS:
            raise ValueError(f"retention.done_days must be in 0-{MAX_DONE_DAYS:g} (ten years), got {self.done_days}")
        check_positive_upto("retention.sweep_interval_s", self.sweep_interval_s, MAX_PERIOD_S, "one day")


@dataclass(frozen=True, slots=True)
class DatabaseSection:
    url: str = ""                    # empty: SQLite at <storage_dir>/state.db; or postgresql+psycopg://...
    lease_s: float = 120.0           # how long claimed work stays ours without renewal

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database.url must be a sqlite:// or postgresql:// URL, got {self.url.split(':')[0]!r}")
        if not 5 <= self.lease_s <= MAX_TIMEOUT_S:
            raise ValueError(f"database.lease_s must be in 5-{MAX_TIMEOUT_S:g} (one hour), got {self.lease_s}")


@dataclass(frozen=True, slots=True)
class WebSection:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""                  # bearer token / login for actions; empty: actions disabled
    public_read: bool = True         # pages and read-only API without login
    show_patient_data: bool = False  # patient names/IDs on pages, only to logged-in users
    max_body_bytes: int = 16384      # a request body above this is refused with 413 while it is read
    auth_max_failures: int = 5       # failed logins / bearer tokens from one address before a lockout
    auth_window_s: float = 300.0     # ... counted over this window
    auth_lockout_s: float = 60.0     # the first lockout (429); each further one doubles ...
    auth_lockout_max_s: float = 3600.0   # ... up to this
    preview_max_slices: int = 256    # a preview section reads at most this many slices of a series
    preview_wait_s: float = 10.0     # how long a preview request waits for its render before 503

    def __post_init__(self) -> None:
        check_port("web.port", self.port)
        if self.show_patient_data and not self.token:
            raise ValueError("web.show_patient_data needs web.token (patient data only to logged-in users)")
        check_int_range("web.max_body_bytes", self.max_body_bytes, 1024, 1 << 24)
        check_int_range("web.auth_max_failures", self.auth_max_failures, 1, 1000)
        check_int_range("web.preview_max_slices", self.preview_max_slices, 16, 4096)
        for key, value in (("web.auth_window_s", self.auth_window_s), ("web.auth_lockout_s", self.auth_lockout_s),
                           ("web.preview_wait_s", self.preview_wait_s)):
            check_float_range(key, value, 0.1, 86400.0)
        check_float_range("web.auth_lockout_max_s", self.auth_lockout_max_s, self.auth_lockout_s, 7 * 86400.0)
