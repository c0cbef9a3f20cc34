"""The Storage SCP: accept CT Image Storage, write the received bytes to the spool, answer.

The C-STORE handler validates the UIDs it needs, writes the file atomically into the spool, queues
the instance for the recorder (dicom_node/record.py, which writes the ledger in batches) and returns:
no decoding, no assembly, nothing heavy. The caller waits for its status.
"""

from __future__ import annotations

import logging
import socketserver
import time
from collections.abc import Callable

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import encode_file_meta

from dicom_node.assocguard import AssociationGuard, AssociationLimits, Refusal, SlotUsage
from dicom_node.assocserver import GuardedServer, start_guarded_server
from dicom_node.config import NodeSection
from dicom_node.datasetlimit import DatasetTooLargeError, read_identifiers
from dicom_node.netutil import VERIFICATION, server_tls_context, set_nodelay
from dicom_node.pdusocket import quiet_cut_pdus
from dicom_node.polling import AdaptivePolling
from dicom_node.spool import Spool, StoredInstance
from dicom_node.uids import checked_uid

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900     # dataset does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

TRANSFER_SYNTAXES: list[UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]

FILE_PREAMBLE = b"\x00" * 128 + b"DICM"
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)   # permanent, service user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)    # permanent, service user, called AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
REJECTION_REASONS = {REJECT_CALLING_AE[1:]: (Refusal.CALLING_AE, "calling AE title not allowed: node.allowed_callers"),
                     REJECT_CALLED_AE[1:]: (Refusal.CALLED_AE, "called AE title is not ours"),
                     REJECT_LOCAL_LIMIT[1:]: (Refusal.LOCAL_LIMIT, "local limit exceeded")}
ABORT_GRACE_S = 1.0                      # after the drain: time for A-ABORTs to go out before sockets shut

OnStored = Callable[[StoredInstance, str], None]
"""Called with the stored instance and the calling AE title; must be quick and may raise OSError."""
OnRefused = Callable[[int, str | None, str | None], None]
"""Told every failure status we answer, with the series and SOP Instance UIDs when they are known."""


class StoreSCP:
    def __init__(self, cfg: NodeSection, spool: Spool, on_stored: OnStored,
                 accept_store: Callable[[], int] | None = None,
                 on_refused: OnRefused | None = None,
                 on_connection_refused: Callable[[str], None] | None = None) -> None:
        self._cfg, self._spool, self._on_stored = cfg, spool, on_stored
        self._accept_store = accept_store      # returns 0 to accept, or a failure status (e.g. disk full)
        self._on_refused = on_refused          # told every failure status we answer (metrics, waiting series)
        self._ae = AE(ae_title=cfg.identity.ae_title)
        self._ae.add_supported_context(VERIFICATION)
        self._ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
        self._limits = AssociationLimits.from_config(cfg)
        self._guard = AssociationGuard(self._limits, on_refused=on_connection_refused)  # told each reason
        self._ae.maximum_pdu_size = cfg.associations.max_pdu_bytes
        self._ae.maximum_associations = self._limits.pynetdicom_ceiling   # the guard decides, not pynetdicom
        self._ae.dimse_timeout = cfg.timing.dimse_timeout_s
        self._ae.network_timeout = cfg.timing.network_timeout_s
        self._ae.acse_timeout = cfg.associations.association_request_timeout_s   # waiting for the A-ASSOCIATE-RQ; ARTIM
        self._ae.require_called_aet = True
        self._server: GuardedServer | None = None
        self._polling = AdaptivePolling(cfg.timing.receive_poll_us / 1e6)

    @property
    def port(self) -> int:
        server = self._server
        if server is None:
            raise RuntimeError("the Storage SCP is not started")
        return int(server.server_address[1])

    def slot_usage(self) -> SlotUsage:
        """Association slots in use and connections waiting to associate (readiness, metrics)."""
        return self._guard.usage()

    def start(self) -> None:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REJECTED, self._log_rejected),
        ]
        if self._cfg.associations.max_pdu == 0:
            logger.warning("node.max_pdu = 0 is deprecated (it meant unlimited): using the default %d bytes; "
                           "set node.max_pdu to a value in bytes", self._cfg.associations.max_pdu_bytes)
        quiet_cut_pdus()
        self._polling.start()
        self._server = start_guarded_server(self._ae, (self._cfg.listen.host, self._cfg.listen.port), guard=self._guard,
                                            evt_handlers=handlers, tls_context=server_tls_context(self._cfg))
        listen = self._cfg.listen
        logger.info("Storage SCP %s listening on %s:%d%s", self._cfg.identity.ae_title, listen.host, self.port,
                    " (DICOM TLS)" if listen.tls_cert else "")

    def drain(self, timeout_s: float) -> None:
        """Stop accepting; close connections that have not associated; let associations in flight finish
        (up to `timeout_s`); then abort what is left, whatever its peer does, and stop."""
        server = self._server
        if server is None:
            return
        socketserver.BaseServer.shutdown(server)                  # ends serve_forever only
        server.server_close()                                     # no new connections
        self._guard.shut(pending=True)                            # nothing in flight on those
        deadline = time.monotonic() + timeout_s
        while self._guard.usage().active and time.monotonic() < deadline:
            time.sleep(0.05)
        if left := self._guard.active_associations():
            logger.warning("aborting %d association(s) still open after the %.0f s drain", len(left), timeout_s)
            for assoc in left:
                assoc.abort(block=False)                          # queued: the DUL sends it if it can
            grace = time.monotonic() + ABORT_GRACE_S
            while self._guard.usage().active and time.monotonic() < grace:
                time.sleep(0.05)
            self._guard.shut(pending=False)                       # a peer in the middle of a PDU: EOF now
        server.shutdown()
        self._server = None
        self._polling.stop()
        logger.info("Storage SCP stopped")

    def _on_accepted(self, event: evt.Event) -> None:
        self._polling.touch(event.assoc)

    def _on_close(self, event: evt.Event) -> None:
        self._polling.forget(event.assoc)

    def _on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: refuse a wrong called AE, callers not on the allow-list, and a full house."""
        assoc = event.assoc
        req = assoc.requestor
        calling_ae = str(getattr(req.primitive, "calling_ae_title", "") or "").strip()
        called_ae = str(getattr(req.primitive, "called_ae_title", "") or "").strip()
        if called_ae != self._cfg.identity.ae_title:
            self._reject(assoc, REJECT_CALLED_AE)
        elif not self._cfg.listen.caller_allowed(calling_ae, str(req.address)):
            self._reject(assoc, REJECT_CALLING_AE)
        elif self._guard.request(assoc) is not None:
            self._reject(assoc, REJECT_LOCAL_LIMIT)

    @staticmethod
    def _reject(assoc: Association, rsd: tuple[int, int, int]) -> None:
        # As pynetdicom rejects by itself: send A-ASSOCIATE-RJ, tell EVT_REJECTED, then stop the
        # association (kill() lets the DUL send the reject before the socket closes).
        assoc.acse.send_reject(*rsd)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _log_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        self._guard.finish(assoc)
        req = assoc.requestor
        calling_ae = str(getattr(req.primitive, "calling_ae_title", "") or req.ae_title or "").strip()
        answer = assoc.acceptor.primitive
        code = (int(getattr(answer, "result_source", 0) or 0), int(getattr(answer, "diagnostic", 0) or 0))
        reason, text = REJECTION_REASONS.get(code, (Refusal.OTHER, f"source 0x{code[0]:02X}, "
                                                                    f"diagnostic 0x{code[1]:02X}"))
        if reason is Refusal.LOCAL_LIMIT:
            usage = self._guard.usage()
            text += (f": {usage.active} of {usage.max_associations} association slots in use "
                     f"(node.max_associations), {usage.pending} connection(s) pending")
        self._guard.report(reason, f"{req.address} {calling_ae}",
                           "refused association from AE %r at %s:%s (%s)", calling_ae, req.address, req.port, text)

    def _refuse(self, status: int, series_uid: str | None = None, sop_uid: str | None = None) -> int:
        if self._on_refused is not None:
            self._on_refused(status, series_uid, sop_uid)
        return status

    def _handle_store(self, event: evt.Event) -> int:
        self._polling.touch(event.assoc)
        calling_ae = str(event.assoc.requestor.ae_title)
        try:
            # Bounded by node.max_dataset_mb (inflated, if deflated) and only the three UIDs: datasetlimit.py
            ds = read_identifiers(event.request.DataSet,  # type: ignore[union-attr]
                                  UID(event.context.transfer_syntax), self._limits.max_dataset_bytes)
            study_uid = checked_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = checked_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
            sop_uid = checked_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        except DatasetTooLargeError as exc:
            logger.warning("refused C-STORE from %s: %s", calling_ae, exc)
            return self._refuse(STATUS_OUT_OF_RESOURCES)
        except ValueError as exc:
            logger.warning("refused C-STORE from %s: %s", calling_ae, exc)
            return self._refuse(STATUS_CANNOT_UNDERSTAND)
        except Exception as exc:  # an undecodable dataset must not kill the association
            logger.warning("refused C-STORE from %s: dataset cannot be read (%s)", calling_ae,
                           type(exc).__name__)
            return self._refuse(STATUS_CANNOT_UNDERSTAND)
        if self._accept_store is not None and (status := self._accept_store()) != STATUS_SUCCESS:
            return self._refuse(status, series_uid, sop_uid)       # the series will wait for this one
        requested = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        if sop_uid != requested:
            logger.warning("refused C-STORE from %s: SOPInstanceUID %s differs from the request's %s",
                           calling_ae, sop_uid, requested)
            return self._refuse(STATUS_DATASET_MISMATCH)
        try:
            # The bytes as received, behind a file meta header: no decode, no re-encode, no copy.
            header = FILE_PREAMBLE + encode_file_meta(event.file_meta)
            with event.request.DataSet.getbuffer() as body:  # type: ignore[union-attr]
                stored = self._spool.put(study_uid, series_uid, sop_uid, (header, body))
            self._on_stored(stored, calling_ae)
        except OSError as exc:
            logger.error("could not store instance %s of series %s: %s", sop_uid, series_uid, exc.strerror)
            return self._refuse(STATUS_OUT_OF_RESOURCES, series_uid, sop_uid)
        except Exception:
            logger.exception("could not record instance %s of series %s", sop_uid, series_uid)
            return self._refuse(STATUS_PROCESSING_FAILURE)
        logger.debug("stored instance %s of series %s", sop_uid, series_uid)
        return STATUS_SUCCESS
