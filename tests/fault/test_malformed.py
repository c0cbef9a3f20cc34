"""Malformed input, 30+ kinds, into one running node: each gets the right DIMSE status or a named
quarantine reason, and the node keeps serving (C-ECHO after every case, a good series at the end).

Every case is sent once by a module fixture (so the quiet periods overlap); each parametrized test then
checks its own outcome. Raw datasets (truncated, wrong VR or length, garbage, mismatched UIDs) are sent
with pynetdicom's chunked-file mode, which puts the file's bytes on the wire without parsing them.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import assemble, policy
from tests.fault.conftest import (
    NODE_AE,
    NodeProcess,
    base_config,
    derived_count,
    echo_ok,
    merge,
    scu,
    send_datasets,
    send_files_raw,
)
from tests.support.ct_series import make_ct_series

CANNOT_UNDERSTAND = 0xC000
DATASET_MISMATCH = 0xA900
MAX_SLICES = 20
CONTEXT_REFUSED = "context-refused"      # the presentation context was not accepted at negotiation


@dataclass
class Outcome:
    series_uid: str
    statuses: list[int] | str
    extra: dict[str, object]


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[int, Path], Outcome]
    status: int | str                     # every C-STORE's status, or CONTEXT_REFUSED
    reason: str | None = None             # the series' quarantine reason; None: nothing is stored
    also: tuple[str, ...] = ()            # other reasons that are as right


def series(seed: int, slices: int = 6, **kwargs: Any) -> list[Dataset]:
    return make_ct_series(slices=slices, rows=16, cols=16, seed=seed, **kwargs)


def datasets_case(build: Callable[[], list[Dataset]]) -> Callable[[int, Path], Outcome]:
    def send(port: int, _workdir: Path) -> Outcome:
        datasets = build()
        return Outcome(str(datasets[0].get("SeriesInstanceUID", "")), send_datasets(datasets, port), {})

    return send


def raw_bytes(ds: Dataset, meta_sop_uid: str | None = None, syntax: str = ExplicitVRLittleEndian,
              patch: Callable[[bytes], bytes] = lambda b: b) -> bytes:
    """A Part 10 file whose dataset bytes went through ``patch``; the meta names ``meta_sop_uid``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(meta_sop_uid or str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = UID(syntax)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    body_ds = ds.copy()
    body_ds.file_meta = meta
    write_dataset(body, body_ds)
    return head.getvalue() + patch(body.getvalue())


def raw_case(build: Callable[[], list[Dataset]], patch: Callable[[bytes], bytes] = lambda b: b,
             meta_uid: Callable[[Dataset], str | None] = lambda ds: None) -> Callable[[int, Path], Outcome]:
    def send(port: int, workdir: Path) -> Outcome:
        datasets = build()
        paths = []
        for i, ds in enumerate(datasets):
            path = workdir / f"{datasets[0].SeriesInstanceUID}-{i}.dcm"
            path.write_bytes(raw_bytes(ds, meta_uid(ds), patch=patch))
            paths.append(path)
        return Outcome(str(datasets[0].SeriesInstanceUID), send_files_raw(paths, port), {})

    return send


def edited(seed: int, edit: Callable[[list[Dataset]], None], **kwargs: Any) -> Callable[[], list[Dataset]]:
    def build() -> list[Dataset]:
        datasets = series(seed, **kwargs)
        edit(datasets)
        return datasets

    return build


def set_all(keyword: str, value: object) -> Callable[[list[Dataset]], None]:
    def edit(datasets: list[Dataset]) -> None:
        for ds in datasets:
            setattr(ds, keyword, value)

    return edit


def delete_all(keyword: str, only: int | None = None) -> Callable[[list[Dataset]], None]:
    def edit(datasets: list[Dataset]) -> None:
        for i, ds in enumerate(datasets):
            if only is None or i == only:
                delattr(ds, keyword)

    return edit


def set_one(index: int, keyword: str, value: object) -> Callable[[list[Dataset]], None]:
    def edit(datasets: list[Dataset]) -> None:
        setattr(datasets[index], keyword, value)

    return edit


def element_patch(tag: tuple[int, int], vr: bytes | None = None, length: int | None = None) -> Callable[[bytes], bytes]:
    """Rewrite one short-form explicit-VR element header: a wrong VR, or a wrong value length."""

    def patch(body: bytes) -> bytes:
        key = struct.pack("<HH", *tag)
        at = body.index(key)
        old_vr, old_len = body[at + 4:at + 6], struct.unpack("<H", body[at + 6:at + 8])[0]
        new = key + (vr or old_vr) + struct.pack("<H", old_len if length is None else length)
        return body[:at] + new + body[at + 8:]

    return patch


def value_patch(tag: tuple[int, int], value: bytes) -> Callable[[bytes], bytes]:
    """Replace one short-form explicit-VR element's value (padded to even length), bypassing pydicom's checks."""

    def patch(body: bytes) -> bytes:
        key = struct.pack("<HH", *tag)
        at = body.index(key)
        old_len = struct.unpack("<H", body[at + 6:at + 8])[0]
        new = value + b" " * (len(value) % 2)
        return body[:at + 6] + struct.pack("<H", len(new)) + new + body[at + 8 + old_len:]

    return patch


def truncate_at(fraction: float) -> Callable[[bytes], bytes]:
    return lambda body: body[: int(len(body) * fraction)]


def pixel_data_truncated(body: bytes) -> bytes:
    return body[: body.index(struct.pack("<HH", 0x7FE0, 0x0010)) + 12 + 100]


def garbage(seed: int) -> Callable[[bytes], bytes]:
    return lambda body: bytes((seed * 7919 + i * 104729) % 251 for i in range(len(body)))


def undecodable_jpeg_ls(seed: int) -> Callable[[int, Path], Outcome]:
    def send(port: int, _workdir: Path) -> Outcome:
        datasets = series(seed)
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = JPEGLSLossless
            ds.PixelData = encapsulate([b"\xff\xd8 this is not a JPEG-LS codestream \xff\xd9" * 3])
            ds["PixelData"].VR = "OB"
        return Outcome(str(datasets[0].SeriesInstanceUID), send_datasets(datasets, port), {})

    return send


def corrupt_jpeg2000(seed: int) -> Callable[[int, Path], Outcome]:
    """A real JPEG 2000 Lossless codestream with its header overwritten: every decoder fails on it."""
    def send(port: int, _workdir: Path) -> Outcome:
        datasets = make_ct_series(slices=6, rows=64, cols=64, seed=seed)     # openjpeg needs more than 16²
        for ds in datasets:
            ds.compress(JPEG2000Lossless)
            frame = bytearray(generate_frames(ds.PixelData, number_of_frames=1).__next__())
            frame[8:64] = bytes(56)
            ds.PixelData = encapsulate([bytes(frame)])
        return Outcome(str(datasets[0].SeriesInstanceUID), send_datasets(datasets, port), {})

    return send


def rejected_context(sop_class: str, syntax: str) -> Callable[[int, Path], Outcome]:
    def send(port: int, _workdir: Path) -> Outcome:
        ae = scu("MODALITY", [syntax], [sop_class])
        ae.add_requested_context(Verification)      # so the association stands and the context's fate shows
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        try:
            assert assoc.is_established, "the association itself should be accepted"
            accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
            return Outcome("", CONTEXT_REFUSED if not accepted else "context-accepted", {})
        finally:
            assoc.release()

    return send


def aborted_midway(port: int, _workdir: Path) -> Outcome:
    """Four of six instances, then an A-ABORT: the four are kept and the series completes."""
    datasets = series(660)
    assoc = scu().associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets[:4]]
    assoc.abort()
    return Outcome(str(datasets[0].SeriesInstanceUID), statuses, {})


def path_characters(port: int, workdir: Path) -> Outcome:
    datasets = series(661)
    evil = "../../../../tmp/fault-evil"
    for ds in datasets:
        ds.SeriesInstanceUID = evil
    return Outcome(evil, send_datasets(datasets, port), {})


def separated_uid(value: str, seed: int, keyword: str = "SeriesInstanceUID") -> Callable[[], list[Dataset]]:
    return edited(seed, set_all(keyword, value))


def mixed_orientation(datasets: list[Dataset]) -> None:
    datasets[2].ImageOrientationPatient = ["0.9998477", "0.0174524", "0", "-0.0174524", "0.9998477", "0"]


def localizer(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def absurd(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.Rows = ds.Columns = 4096


def short_pixels(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.PixelData = ds.PixelData[:100]


def enhanced_ct_in_ct_context(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.SOPClassUID = EnhancedCTImageStorage


def mixed_pixel_spacing(datasets: list[Dataset]) -> None:
    datasets[1].PixelSpacing = ["0.8", "0.8"]


def bits_allocated_mismatch(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7     # the pixel data is still 16-bit


def rows_zero(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.Rows = 0


def rgb_photometric(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0


def not_orthonormal(datasets: list[Dataset]) -> None:
    for ds in datasets:
        ds.ImageOrientationPatient = ["1", "0", "0", "0.5", "0.5", "0"]


CASES = [
    # refused at the C-STORE (nothing stored)
    Case("empty_series_uid", datasets_case(separated_uid("", 640)), CANNOT_UNDERSTAND),
    Case("malformed_uid", datasets_case(separated_uid("1.2.abc.3", 641)), CANNOT_UNDERSTAND),
    Case("uid_with_spaces", datasets_case(separated_uid("1.2 3.4", 642)), CANNOT_UNDERSTAND),
    Case("uid_too_long", datasets_case(separated_uid("1." + "2" * 70, 643)), CANNOT_UNDERSTAND),
    Case("uid_with_path_characters", path_characters, CANNOT_UNDERSTAND),
    Case("missing_study_uid", datasets_case(edited(644, delete_all("StudyInstanceUID"))), CANNOT_UNDERSTAND),
    Case("empty_sop_uid", raw_case(edited(645, set_all("SOPInstanceUID", "")),
                                   meta_uid=lambda ds: "1.2.826.0.1.3680043.10.543.645"), CANNOT_UNDERSTAND),
    Case("sop_uid_mismatch", raw_case(lambda: series(646), meta_uid=lambda ds: str(ds.SOPInstanceUID) + ".9"),
         DATASET_MISMATCH),
    Case("garbage_dataset", raw_case(lambda: series(647), patch=garbage(647)), CANNOT_UNDERSTAND),
    Case("truncated_header", raw_case(lambda: series(648), patch=truncate_at(0.01)), CANNOT_UNDERSTAND),
    Case("unsupported_transfer_syntax", rejected_context(CTImageStorage, "1.2.840.10008.1.2.4.100"),
         CONTEXT_REFUSED),
    Case("unsupported_sop_class_at_negotiation", rejected_context(MRImageStorage, ExplicitVRLittleEndian),
         CONTEXT_REFUSED),
    # stored, then quarantined with a named reason
    Case("truncated_pixel_data", raw_case(lambda: series(649), patch=pixel_data_truncated), 0, "undecodable_pixels"),
    Case("wrong_vr", raw_case(lambda: series(650), patch=element_patch((0x0020, 0x0032), vr=b"UL")), 0,
         "unreadable_file", also=("bad_geometry",)),
    Case("wrong_length", raw_case(lambda: series(651), patch=element_patch((0x0028, 0x0010), length=3)), 0,
         "unreadable_file"),
    Case("missing_pixel_data", datasets_case(edited(652, delete_all("PixelData"))), 0, "undecodable_pixels"),
    Case("short_pixel_data", datasets_case(edited(653, short_pixels)), 0, "undecodable_pixels"),
    Case("undecodable_compressed_pixels", undecodable_jpeg_ls(654), 0, "undecodable_pixels"),
    Case("corrupt_jpeg2000", corrupt_jpeg2000(655), 0, "undecodable_pixels"),
    Case("non_ct_modality", datasets_case(lambda: series(655, modality="MR")), 0, "not_ct"),
    Case("unsupported_sop_class_in_dataset", raw_case(edited(656, enhanced_ct_in_ct_context)), 0,
         "unsupported_sop_class"),
    Case("localizer", datasets_case(edited(657, localizer)), 0, "localizer"),
    Case("non_axial", datasets_case(lambda: series(658, orientation="coronal")), 0, "not_axial"),
    Case("mixed_orientations", datasets_case(edited(659, mixed_orientation)), 0, "mixed_orientation"),
    Case("two_frames_of_reference", datasets_case(lambda: series(662, two_frames_of_reference=True)), 0,
         "mixed_frame_of_reference"),
    Case("duplicate_positions", datasets_case(lambda: series(663, duplicate_position=True)), 0, "duplicate_position"),
    Case("irregular_spacing", datasets_case(lambda: series(664, missing_slice=True)), 0, "irregular_spacing"),
    Case("spacing_out_of_range", datasets_case(lambda: series(665, spacing_mm=1.0)), 0, "spacing_out_of_range"),
    Case("gantry_tilt", datasets_case(lambda: series(666, gantry_tilt_deg=12.0)), 0, "gantry_tilt"),
    Case("mixed_matrix_sizes", datasets_case(lambda: series(667, mixed_size=True)), 0, "mixed_matrix"),
    Case("mixed_pixel_spacing", datasets_case(edited(668, mixed_pixel_spacing)), 0, "mixed_pixel_spacing"),
    Case("absurd_dimensions", datasets_case(edited(669, absurd)), 0, "absurd_dimensions"),
    Case("not_orthonormal_orientation", datasets_case(edited(670, not_orthonormal)), 0, "bad_geometry"),
    Case("bits_allocated_mismatch", datasets_case(edited(675, bits_allocated_mismatch)), 0, "undecodable_pixels"),
    Case("zero_rows", datasets_case(edited(676, rows_zero)), 0, "absurd_dimensions"),
    Case("rgb_photometric", datasets_case(edited(677, rgb_photometric)), 0, "undecodable_pixels"),
    Case("non_numeric_orientation",
         raw_case(lambda: series(678), patch=value_patch((0x0020, 0x0037), b"a\\b\\c\\d\\e\\f")), 0, "bad_geometry"),
    Case("non_numeric_rescale", raw_case(lambda: series(679), patch=value_patch((0x0028, 0x1053), b"abc")), 0,
         "undecodable_pixels", also=("unreadable_file", "bad_geometry")),
    Case("missing_position", datasets_case(edited(671, delete_all("ImagePositionPatient", only=3))), 0,
         "missing_attribute"),
    Case("missing_frame_of_reference", datasets_case(edited(672, delete_all("FrameOfReferenceUID"))), 0,
         "missing_attribute"),
    Case("single_slice", datasets_case(lambda: series(673, slices=1)), 0, "single_slice"),
    Case("enormous_series", datasets_case(lambda: series(674, slices=MAX_SLICES + 4)), 0, "too_many_slices"),
    # kept and processed: an association aborted midway keeps what was acknowledged; tolerated oddities
    Case("association_aborted_midway", aborted_midway, 0, "done"),
    Case("uid_with_leading_zeros", datasets_case(separated_uid("1.2.826.0.1.03680043.10.0543.680", 680)), 0, "done"),
]


@dataclass
class Run:
    node: NodeProcess
    outcomes: dict[str, Outcome]
    echo_after: dict[str, bool]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("malformed")
    raw = merge(base_config(workdir, outbox=True, quiet_period_s=1.0),
                {"series": {"max_slices": MAX_SLICES}})
    node = NodeProcess(workdir, raw)
    try:
        node.start()
        outcomes, echo_after = {}, {}
        with warnings.catch_warnings():      # pydicom warns about the invalid values these cases are made of
            warnings.simplefilter("ignore", UserWarning)
            for case in CASES:
                try:
                    outcomes[case.name] = case.send(node.port, workdir)
                except Exception as exc:  # one broken case must not hide the others' outcomes
                    outcomes[case.name] = Outcome("", f"sending failed: {type(exc).__name__}: {exc}", {})
                echo_after[case.name] = echo_ok(node.port)          # still serving after each kind
        yield Run(node, outcomes, echo_after)
    finally:
        node.cleanup()


# Reasons no malformed *network* input can produce, and where they are tested instead.
NOT_FROM_THE_NETWORK = {
    assemble.MIXED_SERIES: "the spool groups instances by their own SeriesInstanceUID (tests/unit/test_assemble.py)",
    policy.OWN_OUTPUT: "our own output sent back (tests/fault/test_dedup.py)",
}


def test_every_reason_the_node_names_has_a_malformed_case() -> None:
    reasons = {value for module in (assemble, policy) for name, value in vars(module).items()
               if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z]+(_[a-z]+)+", value)}
    assert len(reasons) >= 20                      # the constants were found (the check below is not vacuous)
    covered = {r for c in CASES for r in (c.reason, *c.also) if r}
    assert reasons - set(NOT_FROM_THE_NETWORK) <= covered, sorted(reasons - set(NOT_FROM_THE_NETWORK) - covered)
    assert len({c.name for c in CASES}) == len(CASES), "two cases share a name"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(run: Run, case: Case) -> None:
    outcome = run.outcomes[case.name]
    assert run.echo_after[case.name], "the node stopped answering C-ECHO"
    if isinstance(case.status, str):
        assert outcome.statuses == case.status
    else:
        assert outcome.statuses and set(outcome.statuses) == {case.status}, outcome.statuses
    rows = run.node.series_rows()
    if case.reason is None:
        assert outcome.series_uid not in rows, "a refused instance reached the ledger"
        return
    if case.reason == "done":
        row = run.node.wait_state(outcome.series_uid, "done", timeout_s=40)
        assert row["instance_count"] == len(outcome.statuses)
        assert row["derived_count"] == derived_count(len(outcome.statuses))
        return
    row = run.node.wait_state(outcome.series_uid, ("rejected", "done", "failed"), timeout_s=40)
    assert row["state"] == "rejected"
    assert row["reason"] in (case.reason, *case.also), f"{row['reason']}: {row['detail']}"
    reason_file = run.node.storage_dir / "rejected" / outcome.series_uid / "reason"
    assert reason_file.read_text().splitlines()[0] == row["reason"]


def test_path_characters_never_touch_the_filesystem(run: Run) -> None:
    assert not Path("/tmp/fault-evil").exists()
    storage = run.node.storage_dir
    assert not any(".." in p.name for p in storage.rglob("*"))


def test_undecodable_pixels_log_a_reason_not_a_traceback(run: Run) -> None:
    uid = run.outcomes["corrupt_jpeg2000"].series_uid
    row = run.node.wait_state(uid, ("rejected", "done", "failed"), timeout_s=40)
    assert row["reason"] == "undecodable_pixels" and "1.2.840.10008.1.2.4.90" in row["detail"]
    log = run.node.log_text()
    assert f"series {uid} rejected (undecodable_pixels)" in log
    assert "Traceback" not in log and " pydicom." not in log   # the decoders' own error lines stay quiet


def test_still_processes_a_good_series_afterwards(run: Run) -> None:
    good = series(699)
    uid = str(good[0].SeriesInstanceUID)
    assert send_datasets(good, run.node.port) == [0] * 6
    row = run.node.wait_state(uid, "done", timeout_s=40)
    assert row["derived_count"] == derived_count(6)
    assert run.node.running()
