"""The self-check policy: every derived volume, of every backend, is checked before it is written.

`synth.selfcheck` measures (re-thicken the output with the input's slice profile: PSNR against the
input, mean-HU bias in the lungs; a backend's own off-axis figures carried along); this module
decides, with `[synth] min_consistency_db`, `max_lung_bias_hu` and `on_check_fail`:

- passed: the volume is written as the backend's output, its figures in every instance;
- failed, `fallback`: the interpolation (BIS) backend synthesizes the series instead, and that volume
  is written under the interpolation identity with the reason in its provenance. It is checked and
  its figures recorded too, but it goes out whatever they are: interpolation is the floor, it cannot
  invent anatomy, and when it reads below the thresholds it is the input that is unusual (a 16 x 16
  test phantom reads 26-37 dB), not the method. The same holds when the configured backend *is*
  interpolation: its own volume goes out, saying that it failed;
- failed, `reject`: the series is kept as rejected with reason `quality_check_failed` (whichever
  backend, interpolation too).

Either way every check made is handed on (`CheckedVolume.checks`, `QualityCheckError.checks`) for the
ledger, the dashboard and /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.config import SelfCheckSection
from dicom_node.errors import InvalidSeriesError
from dicom_node.ledger import SelfCheckRecord
from dicom_node.provenance import INTERPOLATION, fallback_note
from synth.seam import ProgressCallback, Synthesizer, SynthIdentity
from synth.selfcheck import SelfCheck, self_check
from synth.volume import CTVolume

QUALITY_CHECK_FAILED = "quality_check_failed"


@dataclass(frozen=True, slots=True)
class CheckedVolume:
    """The derived volume to write (it passed, or `fallback` let it through), what made it, and every check made."""

    volume: CTVolume
    identity: SynthIdentity
    check: SelfCheck
    checks: tuple[SelfCheckRecord, ...]
    fallback_reason: str = ""        # set when a failed check was let through under `fallback`: why

    @property
    def notes(self) -> tuple[str, ...]:
        """The human-readable lines every derived instance carries (ImageComments, DerivationDescription)."""
        return (self.fallback_reason, self.check.summary()) if self.fallback_reason else (self.check.summary(),)


class QualityCheckError(InvalidSeriesError):
    """The derived volume failed its self-check under `reject`; the series is kept with the check made."""

    def __init__(self, series_uid: str, detail: str, checks: tuple[SelfCheckRecord, ...]) -> None:
        super().__init__(series_uid, QUALITY_CHECK_FAILED, detail)
        self.checks = checks


def failures(check: SelfCheck, cfg: SelfCheckSection) -> tuple[str, ...]:
    """What is wrong with a volume by the policy's thresholds; empty when it passes."""
    found = []
    if check.consistency_db < cfg.min_consistency_db:
        found.append(f"consistency {check.consistency_db:.1f} dB < synth.min_consistency_db "
                     f"{cfg.min_consistency_db:g} dB")
    if check.lung_bias_hu is not None and abs(check.lung_bias_hu) > cfg.max_lung_bias_hu:
        found.append(f"lung bias {check.lung_bias_hu:+.1f} HU beyond synth.max_lung_bias_hu "
                     f"{cfg.max_lung_bias_hu:g} HU")
    return tuple(found)


def record(backend: str, check: SelfCheck, problems: tuple[str, ...], *, used: bool) -> SelfCheckRecord:
    return SelfCheckRecord(backend=backend, consistency_db=check.consistency_db, lung_bias_hu=check.lung_bias_hu,
                           passed=not problems, used=used, failure="; ".join(problems),
                           offaxis_psnr_db=check.offaxis_psnr_db, offaxis_bis_psnr_db=check.offaxis_bis_psnr_db,
                           budget_s=check.budget_s, finetune_s=check.finetune_s)


class QualityGate:
    """Synthesizes a volume with the configured backend and checks it; falls back or rejects by policy.

    `fallback` is the interpolation synthesizer (same factor); None when the configured backend is
    interpolation itself.
    """

    def __init__(self, cfg: SelfCheckSection, *, synthesizer: Synthesizer, fallback: Synthesizer | None) -> None:
        if fallback is not None and fallback.factor != synthesizer.factor:
            raise ValueError(f"the fallback synthesizer's factor {fallback.factor} differs from "
                             f"{synthesizer.factor}")
        self._cfg, self._synthesizer, self._fallback = cfg, synthesizer, fallback

    def synthesize(self, volume: CTVolume, *, series_uid: str,
                   progress: ProgressCallback | None = None) -> CheckedVolume:
        """The thin volume to write; QualityCheckError under `reject` (SynthesisRefusedError passes through)."""
        primary = self._synthesizer.identity
        thin = self._synthesizer(volume, progress=progress)
        check = self_check(volume, thin)
        problems = failures(check, self._cfg)
        if not problems:
            return CheckedVolume(thin, primary, check, (record(primary.backend, check, problems, used=True),))
        if self._cfg.on_check_fail == "reject":
            raise QualityCheckError(series_uid, f"{primary.backend} output failed its self-check: "
                                    f"{'; '.join(problems)} (synth.on_check_fail = \"reject\")",
                                    (record(primary.backend, check, problems, used=False),))
        if self._fallback is None:          # interpolation is the fallback itself: it goes out, saying so
            return CheckedVolume(thin, primary, check, (record(primary.backend, check, problems, used=True),),
                                 fallback_reason=fallback_note(primary.backend, problems))
        first = record(primary.backend, check, problems, used=False)
        bis = self._fallback(volume, progress=progress)
        bis_check = self_check(volume, bis)
        bis_problems = failures(bis_check, self._cfg)
        return CheckedVolume(bis, self._fallback.identity, bis_check,
                             (first, record(INTERPOLATION, bis_check, bis_problems, used=True)),
                             fallback_reason=fallback_note(primary.backend, problems, bis_problems))
