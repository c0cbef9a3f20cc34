"""`dicom-node route`: a dry run of the selection checks and [[rules]] over DICOM folders.

For each series found under the paths it prints what the node would do: rejected (with the reason),
or the rule that wins and, for each rule before it, the conditions that failed; or `no_rule`. It
runs the same `assemble` and `routing.route` the synthesis stage runs, on the same header. It sends
nothing, writes nothing, asks no PACS (skip_if_thin is not tried) and prints no patient data (the
values of patient-module keywords are "<redacted>").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.assemble import assemble, read_headers
from dicom_node.config import NodeConfig
from dicom_node.errors import InvalidSeriesError
from dicom_node.routing import route

MAX_FILES = 200000


@dataclass(slots=True)
class FoundSeries:
    series_uid: str
    files: list[Path] = field(default_factory=list)


def _dicom_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        else:
            yield from sorted(p for p in path.rglob("*") if p.is_file())


def find_series(paths: Sequence[Path]) -> tuple[list[FoundSeries], int]:
    """Files grouped by SeriesInstanceUID (in the order first seen), and how many files were not DICOM."""
    found: dict[str, FoundSeries] = {}
    skipped = 0
    for n, path in enumerate(_dicom_files(paths)):
        if n >= MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files under {', '.join(map(str, paths))}; name fewer folders")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
            skipped += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            skipped += 1
            continue
        found.setdefault(uid, FoundSeries(uid)).files.append(path)
    return list(found.values()), skipped


def report_series(cfg: NodeConfig, series: FoundSeries, calling_ae: str | None, out: TextIO) -> str:
    """Print what the node would do with one series; returns the outcome (rejected, no_rule or a rule name)."""
    uid = series.series_uid
    print(f"series {uid} ({len(series.files)} file(s))", file=out)
    try:
        _volume, source = assemble(read_headers(sorted(series.files), uid), uid, cfg.series,
                                   spacing_range_mm=cfg.assembly_spacing_mm())
    except InvalidSeriesError as exc:
        print(f"  selection: rejected ({exc.reason}): {exc.detail}", file=out)
        return "rejected"
    print(f"  selection: accepted ({len(source.sop_uids)} slices at {source.spacing_mm:.2f} mm)", file=out)
    if not cfg.rules:
        if not _spacing_fits(cfg, cfg.synth.backend, source.spacing_mm, out):
            return "rejected"
        print(f"  no [[rules]]: every destination ({', '.join(cfg.destination_names()) or 'none'}); "
              f"backend {cfg.synth.backend}", file=out)
        return ""
    routing = route(cfg.rules, source.header, calling_ae)
    for miss in routing.misses:
        print(f"  rule {miss.rule}: does not hold: {'; '.join(miss.failed)}", file=out)
    if routing.rule is None:
        print("  -> no rule holds: the series would be kept as no_rule", file=out)
        return "no_rule"
    rule = routing.rule
    backend = rule.backend or cfg.synth.backend
    print(f"  -> rule {rule.name}: destinations {', '.join(rule.destinations)}; backend {backend}", file=out)
    if not _spacing_fits(cfg, backend, source.spacing_mm, out):
        return "rejected"
    return rule.name


def _spacing_fits(cfg: NodeConfig, backend: str, spacing_mm: float, out: TextIO) -> bool:
    if (refusal := cfg.spacing_refusal(backend, spacing_mm)) is None:
        return True
    print(f"  selection: rejected (spacing_out_of_range): {refusal}", file=out)
    return False


def dry_run(cfg: NodeConfig, paths: Sequence[Path], *, calling_ae: str | None, out: TextIO) -> int:
    """Report every series under `paths`; the exit status (1 when a path is missing or nothing is found)."""
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"route: {path}: no such file or folder", file=out)
    if missing:
        return 1
    found, skipped = find_series(paths)
    if calling_ae is None and any(c.keyword == "CallingAE" for r in cfg.rules for c in r.match):
        print("note: no --calling-ae given: every CallingAE condition fails", file=out)
    for series in found:
        report_series(cfg, series, calling_ae, out)
    if cfg.series.skip_if_thin is not None:
        print(f"note: skip_if_thin ({cfg.series.skip_if_thin.destination}) is not asked in a dry run", file=out)
    print(f"{len(found)} series; {skipped} file(s) skipped (not DICOM or without a SeriesInstanceUID)", file=out)
    return 0 if found else 1
