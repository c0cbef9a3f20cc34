"""DICOM destinations: C-STORE over an association (C-ECHO to check one).

Every C-STORE response status is checked (pynetdicom's own storescu does not); a report says how
many instances were taken and what the last failure was, so the ledger can retry with backoff.

With a compressed `transfer_syntax`, CT Image Storage is proposed twice: in a presentation context
with only that syntax, and in one with Explicit/Implicit VR Little Endian. When the peer rejects the
first, the instances go uncompressed over the second.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.config import DestinationSection
from dicom_node.encoding import UNCOMPRESSED, encoded_bytes, syntax_uid
from dicom_node.netutil import VERIFICATION, client_tls_args, set_nodelay
from dicom_node.senders.base import CheckResult, SenderContext, SendReport
from dicom_node.senders.cstore import ChannelError, StoreChannel
from dicom_node.senders.registry import sender_for

logger = logging.getLogger(__name__)

# C-STORE statuses that count as stored (PS3.4 B.2.3: warnings B000, B007, B006).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
ECHO_TIMEOUT_S = 10.0


def _scu_ae(calling_ae: str, timeout_s: float, transfer_syntax: str = UNCOMPRESSED) -> AE:
    ae = AE(ae_title=calling_ae)
    if transfer_syntax != UNCOMPRESSED:
        ae.add_requested_context(CTImageStorage, [syntax_uid(transfer_syntax)])
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def echo(dest: DestinationSection, calling_ae: str, timeout_s: float = 10.0) -> int | None:
    """C-ECHO a destination; returns the status, or None when no association could be made."""
    ae = _scu_ae(calling_ae, timeout_s)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest),
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def send_dicom(files: list[Path], dest: DestinationSection, calling_ae: str, timeout_s: float,
               reconnects: int = 2) -> SendReport:
    """C-STORE `files` to `dest` over one association; check every response.

    An association lost mid-series (a peer abort, or a response that never comes) is opened again,
    up to `reconnects` times, and the series goes on from the instance whose status is unknown, so
    one hiccup does not cost a whole backoff. The stores go through a `StoreChannel` (cstore.py).
    """
    ae = _scu_ae(calling_ae, timeout_s, dest.transfer_syntax)
    tally = _Tally(pending=list(files))
    for association in range(reconnects + 1):
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest),
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
        if not assoc.is_established:
            what = "association-rejected" if assoc.is_rejected else "association-failed"
            tally.fail(what, f"could not associate with {dest.ae_title}@{dest.host}:{dest.port} ({what})")
            break
        if association:
            logger.warning("%s: association opened again to go on with %d instance(s)", dest.name,
                           len(tally.pending))
        syntax = _negotiated_syntax(assoc, dest)
        lost = True
        try:
            with StoreChannel(assoc, timeout_s=timeout_s) as channel:
                lost = not _store_all(channel, tally, dest.name, syntax)
        except ChannelError as exc:
            tally.fail("association-failed", str(exc))
        finally:
            if assoc.is_established and lost:
                assoc.abort()
            elif assoc.is_established:
                assoc.release()
        if not tally.pending:
            break
        if tally.status == "ok":
            tally.fail("association-lost", "the association ended before all were sent")
    tally.failed.extend(path.stem for path in tally.pending)    # derived files are named <SOPInstanceUID>.dcm
    return SendReport(dest.name, len(files), tally.sent, tally.status, tally.error, tuple(tally.failed))


@dataclass
class _Tally:
    pending: list[Path]
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    status: str = "ok"
    error: str = ""

    def fail(self, status: str, error: str) -> None:
        self.status, self.error = status, error


def _store_all(channel: StoreChannel, tally: _Tally, name: str, syntax: str) -> bool:
    """C-STORE the pending files in order, in `syntax` (the files as stored for explicit-le); False when
    the association is gone (status unknown)."""
    while tally.pending:
        path = tally.pending[0]
        try:
            encoded = None if syntax == UNCOMPRESSED else encoded_bytes(path, syntax)
            outcome = channel.store(path, part10=encoded)
        except (OSError, ValueError) as exc:     # unreadable, or no context can carry it: nothing was sent
            tally.pending.pop(0)
            tally.failed.append(path.stem)
            tally.fail("not-sent", f"{path.name}: {exc}"[:300])
            continue
        if outcome.status is None:               # no answer: status unknown, the association is gone
            tally.fail("no-response", outcome.detail)
            return False
        tally.pending.pop(0)
        if outcome.status in STORED_STATUSES:
            tally.sent += 1
            if outcome.status != 0:
                logger.warning("%s stored %s with warning status 0x%04X", name, outcome.sop_uid, outcome.status)
        else:
            tally.failed.append(outcome.sop_uid)
            tally.fail(f"0x{outcome.status:04X}", f"C-STORE of {outcome.sop_uid} answered 0x{outcome.status:04X}")
    return True


def _negotiated_syntax(assoc: Association, dest: DestinationSection) -> str:
    """`dest.transfer_syntax` when the peer accepted its presentation context, else uncompressed."""
    wanted = dest.transfer_syntax
    if wanted == UNCOMPRESSED:
        return wanted
    uid = syntax_uid(wanted)
    if any(cx.abstract_syntax == CTImageStorage and cx.transfer_syntax[0] == uid for cx in assoc.accepted_contexts):
        return wanted
    logger.warning("%s: %s refused %s (presentation context rejected); sending uncompressed", dest.name,
                   dest.ae_title, wanted)
    return UNCOMPRESSED


class DicomSender:
    kind = "dicom"

    def __init__(self, dest: DestinationSection, ctx: SenderContext) -> None:
        self.dest, self.name, self._ctx = dest, dest.name, ctx

    def describe(self) -> str:
        d = self.dest
        syntax = "" if d.transfer_syntax == UNCOMPRESSED else d.transfer_syntax
        extras = [x for x in ("TLS" if d.tls else "", syntax) if x]
        return f"{d.ae_title}@{d.host}:{d.port}" + (f" ({', '.join(extras)})" if extras else "")

    def deliver(self, files: Sequence[Path], *, derived_series_uid: str) -> SendReport:
        return send_dicom(list(files), self.dest, self._ctx.calling_ae, self._ctx.timeout_s)

    def check(self) -> CheckResult:
        d = self.dest
        try:
            status = echo(d, self._ctx.calling_ae, timeout_s=min(ECHO_TIMEOUT_S, self._ctx.timeout_s))
            what = "no association" if status is None else f"status 0x{status:04X}"
        except (OSError, ValueError, RuntimeError) as exc:   # TLS and socket errors: a failed check, not a crash
            status, what = None, f"{type(exc).__name__}: {exc}"[:200]
        ok = status == 0
        return CheckResult(ok, f"C-ECHO {d.ae_title}@{d.host}:{d.port}: " + ("success" if ok else f"failed ({what})"))


@sender_for(DestinationSection)
def _dicom(dest: DestinationSection, ctx: SenderContext) -> DicomSender:
    return DicomSender(dest, ctx)
