"""Durable delivery records beside a derived series: `derived/<uid>/delivered/<destination>.sent`.

Written (atomically, fsynced) when a destination has taken the whole derived series, so that the
spool alone can tell what was delivered where: `rebuild-ledger` reads them and does not send a
series again to a destination that already has it. They live inside the derived series' folder, so
processing the series again (which rewrites that folder and sends to every destination again)
clears them, and retention removes them with the series.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dicom_node.spool import atomic_write

logger = logging.getLogger(__name__)

DELIVERED_DIR = "delivered"
RECORD_SUFFIX = ".sent"      # destination names may be "." or "..": never a bare name as a file name


@dataclass(frozen=True, slots=True)
class Delivery:
    destination: str
    sent: int
    at: float                  # when it was recorded (the file's mtime), seconds since the epoch


def record_delivery(derived_dir: Path, *, destination: str, sent: int, now: float) -> bool:
    """Note that `destination` holds all `sent` instances of the derived series in `derived_dir`.

    Returns False (and logs why) when the record cannot be written: the send itself succeeded and the
    ledger has it; only a later ledger rebuild would send the series to that destination again.
    """
    folder = derived_dir / DELIVERED_DIR
    when = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds")
    try:
        if not folder.is_dir():
            folder.mkdir()
            _fsync_dir(derived_dir)
        atomic_write(folder / f"{destination}{RECORD_SUFFIX}", f"{sent} {when}\n".encode())
        _fsync_dir(folder)
    except OSError as exc:
        logger.warning("could not record the delivery of %s to %s (%s); a ledger rebuild would send it again",
                       derived_dir.name, destination, exc.strerror or type(exc).__name__)
        return False
    return True


def deliveries(derived_dir: Path) -> dict[str, Delivery]:
    """destination → its delivery record, for every record beside the derived series."""
    folder = derived_dir / DELIVERED_DIR
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        if not path.name.endswith(RECORD_SUFFIX) or path.name.startswith(".tmp-"):
            continue
        name = path.name[:-len(RECORD_SUFFIX)]
        words = path.read_text(encoding="ascii", errors="replace").split()
        sent = int(words[0]) if words and words[0].isdigit() else 0
        out[name] = Delivery(name, sent, path.stat().st_mtime)
    return out


def _fsync_dir(folder: Path) -> None:
    """The rename into place survives a power cut only once the directory is flushed."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
