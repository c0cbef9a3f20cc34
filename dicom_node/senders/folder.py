"""Folder destinations: the derived files into `<path>/<derived series uid>/`, each atomically, encoded
in the folder's `transfer_syntax` (a plain copy for explicit-le)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dicom_node.config import FolderDestinationSection
from dicom_node.encoding import UNCOMPRESSED, encoded_bytes
from dicom_node.senders.base import CheckResult, SenderContext, SendReport
from dicom_node.senders.registry import sender_for
from dicom_node.spool import atomic_write
from dicom_node.transient import TRANSIENT_ERRNOS


class FolderSender:
    kind = "folder"

    def __init__(self, dest: FolderDestinationSection) -> None:
        self.dest, self.name = dest, dest.name

    def describe(self) -> str:
        syntax = self.dest.transfer_syntax
        return self.dest.path + ("" if syntax == UNCOMPRESSED else f" ({syntax})")

    def deliver(self, files: Sequence[Path], *, derived_series_uid: str) -> SendReport:
        target = Path(self.dest.path) / derived_series_uid
        try:
            target.mkdir(parents=True, exist_ok=True)
            for path in files:
                atomic_write(target / path.name, encoded_bytes(path, self.dest.transfer_syntax))
        except OSError as exc:
            if exc.errno in TRANSIENT_ERRNOS:      # the folder's disk is full: no attempt, the stage waits
                raise
            return SendReport(self.name, len(files), 0, "write-failed", f"{target}: {exc.strerror}")
        return SendReport(self.name, len(files), len(files), "ok", "")

    def check(self) -> CheckResult:
        path = Path(self.dest.path)
        existing = next((p for p in (path, *path.parents) if p.exists()), path)   # created on first send
        ok = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
        return CheckResult(ok, f"folder {path}: " + ("writable" if ok else f"{existing} is not a writable folder"))


@sender_for(FolderDestinationSection)
def _folder(dest: FolderDestinationSection, _ctx: SenderContext) -> FolderSender:
    return FolderSender(dest)
