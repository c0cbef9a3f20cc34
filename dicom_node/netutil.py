"""Small pynetdicom helpers shared by the SCP and the SCU."""

from __future__ import annotations

import logging
import socket

from pydicom.uid import UID
from pynetdicom import evt

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
