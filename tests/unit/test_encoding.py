"""Lossless output encoding per destination (dicom_node.encoding) and the folder sender that writes it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node import encoding
from dicom_node.config import TRANSFER_SYNTAXES, FolderDestinationSection
from dicom_node.encoding import SYNTAX_UIDS, EncodingError, encode, encoded_bytes, syntax_uid
from dicom_node.senders.folder import FolderSender
from tests.support.ct_series import make_ct_series

COMPRESSED = [name for name in TRANSFER_SYNTAXES if name != "explicit-le"]


def derived_like(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A CT instance as the node writes it: signed 16-bit HU, Explicit VR Little Endian, with extremes."""
    ds: Dataset = make_ct_series(slices=1, rows=48, cols=40)[0]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(-1024, 3072, size=(48, 40), dtype=np.int16)
    pixels[0, :4] = [-32768, 32767, -1, 0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path, pixels


def test_every_configured_name_has_a_transfer_syntax() -> None:
    assert tuple(SYNTAX_UIDS) == TRANSFER_SYNTAXES
    with pytest.raises(ValueError, match=r"transfer_syntax must be one of explicit-le, .*, got 'jpeg'"):
        syntax_uid("jpeg")


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_output_decodes_to_the_same_pixels(tmp_path: Path, name: str) -> None:
    path, pixels = derived_like(tmp_path / "1.2.3.dcm")
    data = encoded_bytes(path, name)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == SYNTAX_UIDS[name]
    assert back.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID       # same instance, re-encoded
    assert np.array_equal(back.pixel_array, pixels)
    assert len(data) < path.stat().st_size or name == "rle-lossless"          # noise compresses little


def test_explicit_le_is_the_file_itself(tmp_path: Path) -> None:
    path, _ = derived_like(tmp_path / "a.dcm")
    assert encoded_bytes(path, "explicit-le") == path.read_bytes()


def test_an_instance_that_does_not_survive_is_sent_uncompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path, pixels = derived_like(tmp_path / "a.dcm")
    real_decode = encoding.decode_pixels
    monkeypatch.setattr(encoding, "decode_pixels", lambda data: real_decode(data) + 1)   # a lossy plugin
    with pytest.raises(EncodingError, match=r"jpeg-ls-lossless did not decode back to the same pixels"):
        encode(pydicom.dcmread(path), "jpeg-ls-lossless")
    data = encoded_bytes(path, "jpeg-ls-lossless")
    monkeypatch.undo()
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and np.array_equal(back.pixel_array, pixels)
    assert "sending uncompressed" in caplog.text


def test_encoding_errors_name_the_instance(tmp_path: Path) -> None:
    path, _ = derived_like(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.BitsAllocated = 8                                  # no longer matches the pixel data
    with pytest.raises(EncodingError, match=rf"{ds.SOPInstanceUID}: rle-lossless encoding failed"):
        encode(ds, "rle-lossless")


@pytest.mark.parametrize("name", ["explicit-le", "jpeg2000-lossless"])
def test_a_folder_destination_writes_its_transfer_syntax(tmp_path: Path, name: str) -> None:
    files, arrays = zip(*(derived_like(tmp_path / "src" / f"1.2.{i}.dcm", seed=i) for i in range(3)), strict=True)
    sender = FolderSender(FolderDestinationSection("out", str(tmp_path / "out"), transfer_syntax=name))
    report = sender.deliver(list(files), derived_series_uid="2.25.7")
    assert report.ok
    for path, pixels in zip(files, arrays, strict=True):
        back = pydicom.dcmread(tmp_path / "out" / "2.25.7" / path.name)
        assert back.file_meta.TransferSyntaxUID == SYNTAX_UIDS[name]
        assert np.array_equal(back.pixel_array, pixels)
    assert sender.describe() == str(tmp_path / "out") + ("" if name == "explicit-le" else f" ({name})")


CONCURRENT_J2K = """
import copy, threading, numpy as np
from pydicom.examples import ct
from dicom_node.encoding import encode
ds = ct.copy(); ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
ds.PixelData = np.random.default_rng(0).integers(-1024, 3000, (128, 128), dtype=np.int16).tobytes()
def work():
    for _ in range(25):
        encode(copy.deepcopy(ds), "jpeg2000-lossless")
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print("ok")
"""


def test_send_stages_may_encode_jpeg2000_at_once() -> None:
    """Four threads encoding J2K at once: without encoding's lock, pylibjpeg-openjpeg 2.6 segfaults."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", CONCURRENT_J2K], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr[-2000:]
