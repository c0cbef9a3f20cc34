"""The Storage SCP: accept CT Image Storage, write the received bytes to the spool, answer.

The C-STORE handler validates the UIDs it needs, writes atomically, records the instance in the
ledger and returns: no decoding, no assembly, nothing heavy. The caller waits for its status.
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
from pynetdicom.dsutils import encode_file_meta

from dicom_node.config import NodeSection
from dicom_node.netutil import VERIFICATION, server_tls_context, set_nodelay
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
REJECT_PERMANENT, REJECT_SOURCE_USER, REJECT_CALLING_AE_NOT_RECOGNIZED = 0x01, 0x01, 0x03

OnStored = Callable[[StoredInstance, str], None]
"""Called with the stored instance and the calling AE title; must be quick and may raise OSError."""


class StoreSCP:
    def __init__(self, cfg: NodeSection, spool: Spool, on_stored: OnStored,
                 accept_store: Callable[[], int] | None = None,
                 on_refused: Callable[[int], None] | None = None) -> None:
        self._cfg, self._spool, self._on_stored = cfg, spool, on_stored
        self._accept_store = accept_store      # returns 0 to accept, or a failure status (e.g. disk full)
        self._on_refused = on_refused          # told every failure status we answer (metrics)
        self._ae = AE(ae_title=cfg.ae_title)
        self._ae.add_supported_context(VERIFICATION)
        self._ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
        self._ae.maximum_pdu_size = cfg.max_pdu
        self._ae.dimse_timeout = cfg.dimse_timeout_s
        self._ae.network_timeout = cfg.network_timeout_s
        self._ae.acse_timeout = cfg.network_timeout_s
        self._ae.require_called_aet = True
        self._server: object | None = None
        self._polling = AdaptivePolling(cfg.receive_poll_us / 1e6)

    @property
    def port(self) -> int:
        server = self._server
        if server is None:
            raise RuntimeError("the Storage SCP is not started")
        return int(server.server_address[1])  # type: ignore[attr-defined]

    def start(self) -> None:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REQUESTED, self._check_caller),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REJECTED, self._log_rejected),
        ]
        self._polling.start()
        self._server = self._ae.start_server((self._cfg.host, self._cfg.port), block=False,
                                             evt_handlers=handlers, ssl_context=server_tls_context(self._cfg))
        logger.info("Storage SCP %s listening on %s:%d%s", self._cfg.ae_title, self._cfg.host, self.port,
                    " (DICOM TLS)" if self._cfg.tls_cert else "")

    def drain(self, timeout_s: float) -> None:
        """Stop accepting associations, let those in flight finish (up to `timeout_s`), then stop."""
        server = self._server
        if server is None:
            return
        socketserver.BaseServer.shutdown(server)  # type: ignore[arg-type]   # ends serve_forever only
        server.server_close()  # type: ignore[attr-defined]                  # no new connections
        deadline = time.monotonic() + timeout_s
        while server.active_associations and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        server.shutdown()  # type: ignore[attr-defined]                      # aborts what is left
        self._server = None
        self._polling.stop()
        logger.info("Storage SCP stopped")

    def _on_accepted(self, event: evt.Event) -> None:
        self._polling.touch(event.assoc)

    def _on_close(self, event: evt.Event) -> None:
        self._polling.forget(event.assoc)

    def _check_caller(self, event: evt.Event) -> None:
        """EVT_REQUESTED: refuse callers not on the allow-list (AE title, optionally with host)."""
        req = event.assoc.requestor
        calling_ae = str(getattr(req.primitive, "calling_ae_title", "") or "")
        if not self._cfg.caller_allowed(calling_ae, str(req.address)):
            # As pynetdicom rejects by itself: send A-ASSOCIATE-RJ, tell EVT_REJECTED, then stop the
            # association (kill() lets the DUL send the reject before the socket closes).
            event.assoc.acse.send_reject(REJECT_PERMANENT, REJECT_SOURCE_USER, REJECT_CALLING_AE_NOT_RECOGNIZED)
            evt.trigger(event.assoc, evt.EVT_REJECTED, {})
            event.assoc.kill()

    @staticmethod
    def _log_rejected(event: evt.Event) -> None:
        req = event.assoc.requestor
        calling_ae = str(getattr(req.primitive, "calling_ae_title", "") or req.ae_title or "").strip()
        logger.warning("refused association from AE %r at %s:%s (calling or called AE not allowed)",
                       calling_ae, req.address, req.port)

    def _refuse(self, status: int) -> int:
        if self._on_refused is not None:
            self._on_refused(status)
        return status

    def _handle_store(self, event: evt.Event) -> int:
        self._polling.touch(event.assoc)
        calling_ae = str(event.assoc.requestor.ae_title)
        if self._accept_store is not None and (status := self._accept_store()) != STATUS_SUCCESS:
            return self._refuse(status)
        try:
            ds = event.dataset
            study_uid = checked_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = checked_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
            sop_uid = checked_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        except ValueError as exc:
            logger.warning("refused C-STORE from %s: %s", calling_ae, exc)
            return self._refuse(STATUS_CANNOT_UNDERSTAND)
        except Exception as exc:  # an undecodable dataset must not kill the association
            logger.warning("refused C-STORE from %s: dataset cannot be read (%s)", calling_ae,
                           type(exc).__name__)
            return self._refuse(STATUS_CANNOT_UNDERSTAND)
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
            return self._refuse(STATUS_OUT_OF_RESOURCES)
        except Exception:
            logger.exception("could not record instance %s of series %s", sop_uid, series_uid)
            return self._refuse(STATUS_PROCESSING_FAILURE)
        logger.debug("stored instance %s of series %s", sop_uid, series_uid)
        return STATUS_SUCCESS
