"""Output encoding per destination: the spool's Explicit VR Little Endian instances, re-encoded losslessly.

`transfer_syntax` on a destination names one of TRANSFER_SYNTAXES (dicom_node.config). The encoders
are pydicom's: JPEG-LS through pyjpegls, JPEG 2000 through pylibjpeg-openjpeg, RLE natively. Every
compressed frame is decoded again and compared with the original pixels before it leaves the node:
a plugin that lost a bit would change HU silently. An instance that cannot be encoded (or does not
survive the check) goes uncompressed, with an error logged; the destination still gets the right
pixels.

Each send stage runs in its own thread, and pylibjpeg-openjpeg's encoder is not thread-safe (two
threads encoding JPEG 2000 at once crash the process: seen with 2.6.0, a segfault in garbage
collection). So encoding holds one lock per transfer syntax; decoding needs none.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.config import TRANSFER_SYNTAXES

logger = logging.getLogger(__name__)

UNCOMPRESSED = "explicit-le"
SYNTAX_UIDS: dict[str, UID] = {
    "explicit-le": ExplicitVRLittleEndian,
    "jpeg-ls-lossless": JPEGLSLossless,
    "jpeg2000-lossless": JPEG2000Lossless,
    "rle-lossless": RLELossless,
}
assert tuple(SYNTAX_UIDS) == TRANSFER_SYNTAXES
_ENCODER_LOCKS = {uid: threading.Lock() for uid in SYNTAX_UIDS.values()}


class EncodingError(ValueError):
    """An instance could not be encoded losslessly in the asked transfer syntax."""


def syntax_uid(name: str) -> UID:
    try:
        return SYNTAX_UIDS[name]
    except KeyError:
        raise ValueError(f"transfer_syntax must be one of {', '.join(SYNTAX_UIDS)}, got {name!r}") from None


def encode(ds: Dataset, name: str) -> Dataset:
    """`ds` (uncompressed) encoded in place as `name`, its pixels checked to decode back exactly."""
    target = syntax_uid(name)
    if ds.file_meta.TransferSyntaxUID == target:
        return ds
    if target == ExplicitVRLittleEndian:
        raise EncodingError(f"{ds.SOPInstanceUID}: is {ds.file_meta.TransferSyntaxUID}, not uncompressed")
    try:
        original = ds.pixel_array.copy()
        with _ENCODER_LOCKS[target]:
            ds.compress(target, generate_instance_uid=False)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise EncodingError(f"{ds.SOPInstanceUID}: {name} encoding failed ({exc})") from exc
    decoded = decode_pixels(to_bytes(ds))
    if decoded.shape != original.shape or not np.array_equal(decoded, original):
        raise EncodingError(f"{ds.SOPInstanceUID}: {name} did not decode back to the same pixels")
    return ds


def decode_pixels(data: bytes) -> np.ndarray:
    """The pixels of a Part 10 file in memory, as a receiver would decode them."""
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encoded_dataset(path: Path, name: str) -> Dataset:
    """The derived file at `path` as `name`; uncompressed (with an error logged) when that fails."""
    ds = pydicom.dcmread(path)
    if name == UNCOMPRESSED:
        return ds
    try:
        return encode(ds, name)
    except EncodingError as exc:
        logger.error("sending uncompressed: %s", exc)
        return pydicom.dcmread(path)


def encoded_bytes(path: Path, name: str) -> bytes:
    """The derived file's bytes (a DICOM Part 10 file) as `name`; the file's own bytes for explicit-le."""
    if name == UNCOMPRESSED:
        return path.read_bytes()
    return to_bytes(encoded_dataset(path, name))
