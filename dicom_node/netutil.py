"""Small pynetdicom helpers shared by the SCP and the SCU."""

from __future__ import annotations

import logging
import socket
import ssl

from pydicom.uid import UID
from pynetdicom import evt

from dicom_node.config import DestinationSection, NodeSection

logger = logging.getLogger(__name__)

VERIFICATION = UID("1.2.840.10008.1.1")   # Verification SOP Class


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle, or every C-STORE waits ~40 ms on delayed ACKs."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # not fatal: only slower
            logger.warning("could not set TCP_NODELAY: %s", exc)


def server_tls_context(cfg: NodeSection) -> ssl.SSLContext | None:
    """The SCP's TLS context, or None for plain DICOM. With `tls_ca`, callers must show a certificate."""
    if not cfg.listen.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.listen.tls_cert, cfg.listen.tls_key)
    if cfg.listen.tls_ca:
        ctx.load_verify_locations(cafile=cfg.listen.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_tls_args(dest: DestinationSection) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom `tls_args` for a destination, or None for plain DICOM; the server is always verified."""
    if not dest.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.tls_ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls_cert:
        ctx.load_cert_chain(dest.tls_cert, dest.tls_key)
    return ctx, dest.host
