"""UID checks (a UID is never trusted as a path) and deterministic derived UIDs."""

from __future__ import annotations

import hashlib
import re
import uuid

from pydicom.uid import generate_uid

_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")   # leading zeros occur in real data; still path-safe


def checked_uid(value: object, name: str) -> str:
    """Return `value` as a UID string safe to use as a file name, or raise ValueError naming it.

    Accepts only digits and dots with at least two components, at most 64 characters: so `../`,
    slashes, spaces and empty values are all refused. Leading zeros in a component are tolerated
    (real scanners emit them) because they cannot escape a directory.
    """
    text = str(value).strip("\x00 ") if value is not None else ""
    if not text:
        raise ValueError(f"{name} is empty")
    if len(text) > 64:
        raise ValueError(f"{name} is longer than 64 characters")
    if not _LENIENT_UID_RE.match(text):
        raise ValueError(f"{name} {text[:70]!r} is not a dotted numeric UID")
    return text


def derived_uid(root: str, *parts: str) -> str:
    """A UID determined by `parts` alone: the same inputs always give the same UID.

    Under `2.25.` (UUID-derived, PS3.5 B.2) when `root` is empty, else under the configured root.
    """
    sources = ["dicom-synth-node", *parts]
    if root:
        return str(generate_uid(prefix=f"{root}.", entropy_srcs=sources))
    # pydicom ignores entropy sources without a prefix, so derive the 2.25 UUID ourselves (name-based).
    digest = hashlib.sha256("\x00".join(sources).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"
