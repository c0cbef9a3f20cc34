"""dcmtk storescu (the scanner) -> the node -> dcmtk storescp (a PACS/CAD), checked with dicom3tools."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from tests.interop.checks import check_derived_pixels, check_derived_series, expected_count
from tests.interop.peers import (
    DCMCJPEG,
    DCMCJPLS,
    DCMCRLE,
    TEST_RESERVE,
    PeerError,
    RunningNode,
    StoreSCP,
    dcentvfy,
    dciodvfy_errors,
    require,
    run_tool,
    start_node,
    stop_process,
    storescu,
    storescu_profile,
    wait_for,
    wait_until_stable,
)
from tests.support.ct_series import make_ct_series, write_series
from tests.support.realct import RealSeries

pytestmark = pytest.mark.interop

DERIVE_TIMEOUT_S = 45.0
SETTLE_S = 1.0


def wait_for_derived(
    cad: StoreSCP, node: RunningNode, source: Sequence[Dataset], timeout_s: float = DERIVE_TIMEOUT_S
) -> list[Path]:
    """One file per SOP instance of the derived series of ``source``'s study at ``cad``, once complete.

    An instance received twice (a retried send) counts once, as a PACS would store it.
    """
    study, source_series = str(source[0].StudyInstanceUID), str(source[0].SeriesInstanceUID)
    want = expected_count(len(source))

    def derived_files() -> dict[str, Path]:
        received = cad.received()  # one snapshot: storescp keeps writing
        return {sop: path for path, (st, se, sop) in sorted(received.items()) if st == study and se != source_series}

    try:
        wait_for(lambda: len(derived_files()) >= want, timeout_s, f"{want} derived instances at storescp",
                 alive=lambda: node.died() or cad.died())  # fmt: skip
        wait_until_stable(lambda: len(cad.files()), SETTLE_S, timeout_s)
    except PeerError as exc:
        raise AssertionError(
            f"{exc}; storescp has {len(derived_files())} derived instances; rejected: {node.rejected()}\n"
            f"node log tail:\n{node.log_tail()}"
        ) from exc
    return list(derived_files().values())


def assert_valid_dicom(paths: Sequence[Path]) -> None:
    errors = [line for path in paths for line in dciodvfy_errors(path)]
    assert errors == [], "dciodvfy errors:\n" + "\n".join(errors[:40])


def assert_consistent_series(paths: Sequence[Path]) -> None:
    result = dcentvfy(paths)
    assert result.returncode == 0, f"dcentvfy exit {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}"


def test_synthetic_series_round_trip(tmp_path: Path, node: RunningNode, cad: StoreSCP) -> None:
    source = make_ct_series(slices=12, rows=64, cols=64, seed=101, shuffled=True)
    write_series(source, tmp_path / "src")
    storescu(tmp_path / "src", node.port, node.ae_title)

    paths = wait_for_derived(cad, node, source)
    derived = [dcmread(p) for p in paths]
    ordered = check_derived_series(source, derived)
    check_derived_pixels(source, ordered)
    assert_valid_dicom(paths)
    assert_consistent_series(paths)

    series_uid = str(derived[0].SeriesInstanceUID)
    outbox = node.outbox_series()
    assert list(outbox) == [series_uid], f"folder destination holds {sorted(outbox)}"
    assert sorted(p.stem for p in outbox[series_uid]) == sorted(str(ds.SOPInstanceUID) for ds in derived)


def test_resend_gives_the_same_derived_series(tmp_path: Path, node: RunningNode, cad: StoreSCP) -> None:
    source = make_ct_series(slices=8, seed=102)
    write_series(source, tmp_path / "src")
    started = time.monotonic()
    storescu(tmp_path / "src", node.port, node.ae_title)
    first = wait_for_derived(cad, node, source)
    latency_s = time.monotonic() - started
    first_uids = {cad.received()[p][2] for p in first}
    series_uid = cad.received()[first[0]][1]

    storescu(tmp_path / "src", node.port, node.ae_title)
    # Whether the node sends the series again or not, anything it produces arrives within this window.
    window_s = max(3 * latency_s, node.quiet_period_s + 6)
    deadline = time.monotonic() + window_s
    study = str(source[0].StudyInstanceUID)
    while time.monotonic() < deadline:
        if len(cad.series_in_study(study)) > 1:  # a second derived series
            break
        time.sleep(0.2)
    wait_until_stable(lambda: len(cad.files()), SETTLE_S, DERIVE_TIMEOUT_S)

    series = cad.series_in_study(study)
    assert list(series) == [series_uid], f"derived series after a re-send: {sorted(series)}"
    assert {cad.received()[p][2] for p in series[series_uid]} == first_uids
    assert list(node.outbox_series()) == [series_uid]
    assert len(node.outbox_series()[series_uid]) == len(first_uids)


def test_real_chest_ct_round_trip(real_lung1: RealSeries, node: RunningNode, cad: StoreSCP) -> None:
    source = [dcmread(p, stop_before_pixels=True) for p in real_lung1.paths]
    storescu(list(real_lung1.paths), node.port, node.ae_title)

    paths = wait_for_derived(cad, node, source, timeout_s=120)
    assert len(paths) == expected_count(real_lung1.slices) == 236
    derived = [dcmread(p, stop_before_pixels=True) for p in paths]
    ordered = check_derived_series(source, derived)
    by_sop = {str(ds.SOPInstanceUID): p for p, ds in zip(paths, derived, strict=True)}
    assert_valid_dicom(paths)
    assert_consistent_series(paths)
    check_derived_pixels(
        [dcmread(p) for p in real_lung1.paths[:3]], [dcmread(by_sop[str(ds.SOPInstanceUID)]) for ds in ordered[:11]]
    )


def _compress_with(tool: Path, *args: str) -> Callable[[Path, Path], None]:
    def compress(src: Path, dst: Path) -> None:
        result = run_tool(require(tool), *args, str(src), str(dst))
        assert result.returncode == 0, result.stdout + result.stderr

    return compress


def _compress_j2k(src: Path, dst: Path) -> None:
    ds = dcmread(src)
    ds.compress(JPEG2000Lossless)
    ds.save_as(dst, enforce_file_format=True)


COMPRESSORS: dict[str, Callable[[Path, Path], None]] = {
    "1.2.840.10008.1.2.4.80": _compress_with(DCMCJPLS),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90": _compress_j2k,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5": _compress_with(DCMCRLE),  # RLE lossless
    "1.2.840.10008.1.2.4.70": _compress_with(DCMCJPEG, "+e1"),  # JPEG lossless SV1
}


@pytest.mark.parametrize("syntax", list(COMPRESSORS), ids=["jpeg-ls", "j2k", "rle", "jpeg-lossless"])
def test_compressed_input_is_accepted_and_decoded(
    tmp_path: Path, node: RunningNode, cad: StoreSCP, syntax: str
) -> None:
    source = make_ct_series(slices=6, seed=110 + list(COMPRESSORS).index(syntax))
    plain = write_series(source, tmp_path / "plain")
    (tmp_path / "compressed").mkdir()
    compress = COMPRESSORS[syntax]
    for path in plain:
        compress(path, tmp_path / "compressed" / path.name)
    compressed = sorted((tmp_path / "compressed").glob("*.dcm"))
    assert {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in compressed} == {syntax}

    # Propose CT Image Storage with this syntax only: storescu cannot fall back to decompressing.
    storescu(compressed, node.port, node.ae_title, *storescu_profile(tmp_path, syntax))

    paths = wait_for_derived(cad, node, source)
    derived = [dcmread(p) for p in paths]
    ordered = check_derived_series(source, derived)
    check_derived_pixels(source, ordered)
    assert_valid_dicom(paths[:3])


REJECTIONS: dict[str, dict[str, Any]] = {
    "gantry_tilt": {"gantry_tilt_deg": 15.0},
    "single_slice": {"slices": 1},
    "not_axial": {"orientation": "coronal"},
    "irregular_spacing": {"missing_slice": True},
    "spacing_out_of_range": {"spacing_mm": 2.5},
}
OTHER_DEFECTS: dict[str, dict[str, Any]] = {
    "duplicate_position": {"duplicate_position": True},
    "mixed_size": {"mixed_size": True},
    "two_frames_of_reference": {"two_frames_of_reference": True},
}


def test_bad_series_are_rejected_with_reasons_and_the_node_keeps_serving(
    tmp_path: Path, node: RunningNode, cad: StoreSCP
) -> None:
    bad: dict[str, tuple[str, list[Dataset]]] = {}
    for i, (name, kwargs) in enumerate({**REJECTIONS, **OTHER_DEFECTS}.items()):
        series = make_ct_series(**{"slices": 8, "rows": 32, "cols": 32, "seed": 120 + i, **kwargs})
        bad[str(series[0].SeriesInstanceUID)] = (name, series)
        write_series(series, tmp_path / name)
        storescu(tmp_path / name, node.port, node.ae_title)
    good = make_ct_series(slices=6, seed=140)
    write_series(good, tmp_path / "good")
    storescu(tmp_path / "good", node.port, node.ae_title)

    check_derived_series(good, [dcmread(p) for p in wait_for_derived(cad, node, good)])
    try:
        wait_for(lambda: set(bad) <= set(node.rejected()), DERIVE_TIMEOUT_S, "every bad series in rejected/",
                 alive=node.died)  # fmt: skip
    except PeerError as exc:
        missing = {bad[uid][0] for uid in set(bad) - set(node.rejected())}
        raise AssertionError(f"{exc}: not rejected: {sorted(missing)}\nnode log:\n{node.log_tail()}") from exc
    reasons = {bad[uid][0]: node.rejected()[uid] for uid in bad}
    codes = {name: (reason.split() or [""])[0] for name, reason in reasons.items()}
    assert {name: codes[name] for name in REJECTIONS} == {name: name for name in REJECTIONS}, reasons
    assert all(codes[name] for name in OTHER_DEFECTS), reasons
    for uid in bad:  # the instances are kept beside the reason
        kept = [p for p in (node.storage_dir / "rejected" / uid).rglob("*") if p.is_file() and p.name != "reason"]
        assert kept, f"rejected/{uid} ({bad[uid][0]}) keeps no instances"
    bad_studies = {str(series[0].StudyInstanceUID) for _, series in bad.values()}
    assert not [p for p, (study, _, _) in cad.received().items() if study in bad_studies]
    assert node.died() is None


def test_sigterm_stops_the_node_gracefully(node: RunningNode) -> None:
    assert stop_process(node.process) == 0, node.log_tail()


def test_received_instances_overwrite_reserved_files_exactly(tmp_path: Path) -> None:
    """dcmtk storescu -> a node whose spool reserve holds longer files full of 0xFF: every instance lands
    in one of them (none is created), cut to its length, element for element what was sent.

    The seeded files are all shorter than the node's own zero-filled ones (520 KiB), so they go first."""
    source = make_ct_series(slices=6, rows=64, cols=64, seed=103)
    sent = write_series(source, tmp_path / "src")
    size = sent[0].stat().st_size
    reserve = tmp_path / "node" / "var" / "reserve"
    reserve.mkdir(parents=True)
    for n, length in enumerate((size + 4096, size + 200, size + 300, size * 2, size * 3, size * 4), start=1):
        (reserve / f"{length}.{n}").write_bytes(b"\xff" * length)
    inodes = {p.stat().st_ino for p in reserve.iterdir()}
    node = start_node(tmp_path / "node", quiet_period_s=3600, node_settings=[TEST_RESERVE])
    try:
        storescu(tmp_path / "src", node.port, node.ae_title)
        incoming = sorted((node.storage_dir / "incoming" / str(source[0].SeriesInstanceUID)).glob("*.dcm"))
        assert len(incoming) == len(source)
        assert {p.stat().st_ino for p in incoming} <= inodes        # each one a reserved file, overwritten
        by_sop = {str(dcmread(p).SOPInstanceUID): p for p in sent}
        for path in incoming:
            stored = dcmread(path)
            original = dcmread(by_sop[str(stored.SOPInstanceUID)])
            assert stored == original                                 # every element, pixel data included
            assert stored.PixelData == original.PixelData
            assert b"\xff" * 64 not in path.read_bytes()              # no tail of an old file left
    finally:
        stop_process(node.process)
