"""pynetdicom's association server with the node's admission policy (assocguard) built in.

What differs from `AE.start_server`:

* admission happens in the accept loop, before a thread is made: a connection over the pending caps
  is closed at once (`AssociationGuard.admit`);
* DICOM TLS: pynetdicom wraps the accepted socket in the accept loop with the handshake on connect,
  so one client that never finishes its handshake stops every accept. Here the handshake runs in the
  connection's own thread, bounded by its request deadline;
* each association gets a `BoundedSocket` (PDU length bounds and deadlines) and a `BoundedDIMSE`
  (data set bound), and its DUL thread is a daemon: nothing a peer does keeps the process alive;
* the listen backlog holds a burst of `max_pending` connections (pynetdicom's is 5).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.assocguard import AssociationGuard, ConnectionTicket, Refusal
from dicom_node.datasetlimit import BoundedDIMSE
from dicom_node.pdusocket import BoundedSocket

logger = logging.getLogger(__name__)


def _shut(sock: socket.socket) -> None:
    """Shut down and close a socket this thread owns."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _shut_from_outside(sock: socket.socket) -> None:
    """End a connection another thread is reading: shut down a duplicate of its descriptor, so the
    reader sees EOF and closes it itself (no close under its feet; works for TLS sockets too)."""
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class GuardedRequestHandler(RequestHandler):
    """One connection: TLS handshake (bounded), then a bounded pynetdicom acceptor association."""

    server: GuardedServer

    def __init__(self, request: socket.socket, client_address: Any, server: GuardedServer,
                 ticket: ConnectionTicket) -> None:
        self.ticket = ticket
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        ticket = self.ticket
        if self.server.tls_context is not None and not self._handshake():
            return
        assoc = self._create_association()
        self.server.guard.bind(ticket, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        ticket.started = True

    def _handshake(self) -> bool:
        ticket, context = self.ticket, self.server.tls_context
        assert context is not None
        sock = self.request
        try:
            sock.settimeout(max(ticket.remaining_s(), 0.001))
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            sock.do_handshake()
        except TimeoutError:
            ticket.refuse(Refusal.TLS_HANDSHAKE, f"TLS handshake not finished within "
                          f"{self.server.guard.limits.request_timeout_s:g} s (node.association_request_timeout_s)")
        except (ssl.SSLError, OSError) as exc:
            ticket.refuse(Refusal.TLS_HANDSHAKE, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
        else:
            self.request = sock
            return True
        _shut(sock)
        ticket.close()
        return False

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        ticket = self.ticket
        limits = self.server.guard.limits
        stock = assoc.dul.socket
        assert stock is not None
        assoc.dul.socket = BoundedSocket.adopt(stock, ticket=ticket)
        assoc.dimse = BoundedDIMSE(assoc, max_dataset_bytes=limits.max_dataset_bytes,
                                   message_timeout_s=limits.message_timeout_s, guard=self.server.guard)
        assoc.dul.daemon = True
        # The ARTIM timer ends a connection that sends nothing at all; start it at what is left of the
        # request deadline (the TLS handshake used some). pynetdicom starts it on Evt5, i.e. at once.
        assoc.dul.artim_timer.timeout = max(ticket.remaining_s(), 0.001)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """ThreadedAssociationServer that admits through an AssociationGuard (see the module doc)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: list[Any],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[Any] | None = None, *,
                 guard: AssociationGuard, tls_context: ssl.SSLContext | None) -> None:
        if ssl_context is not None:
            raise ValueError("pass TLS as tls_context: the handshake must not run in the accept loop")
        self.guard = guard
        self.tls_context = tls_context
        self.request_queue_size = max(guard.limits.max_pending, 5)
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers,
                         request_handler=GuardedRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept loop: admit or close at once; an admitted connection gets its own thread."""
        ticket = self.guard.admit(str(client_address[0]), int(client_address[1]))
        if ticket is None:
            self.shutdown_request(request)
            return
        ticket.closer = lambda: _shut_from_outside(request)   # drain: ends it whatever state it is in
        thread = threading.Thread(target=self._serve, args=(request, client_address, ticket),
                                  name=f"connection-{client_address[0]}:{client_address[1]}", daemon=True)
        try:
            thread.start()
        except RuntimeError:                  # no thread to be had: this connection goes, its place with it
            ticket.close()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver's hook for a failure in the accept loop: log it (it prints to stderr)."""
        logger.exception("could not serve the connection from %s", client_address[0] if client_address else "?")

    def _serve(self, request: socket.socket, client_address: Any, ticket: ConnectionTicket) -> None:
        try:
            GuardedRequestHandler(request, client_address, self, ticket)
        except Exception:  # one connection's failure must not reach the accept loop; say which
            logger.exception("connection from %s failed before its association started", ticket.peer)
            _shut(request)
            ticket.close()


def start_guarded_server(ae: AE, address: tuple[str, int], *, guard: AssociationGuard,
                         evt_handlers: list[Any], tls_context: ssl.SSLContext | None) -> GuardedServer:
    """AE.start_server(block=False) with a GuardedServer: the serving thread, registered with the AE."""
    server = ae.make_server(address, evt_handlers=evt_handlers, server_class=GuardedServer, guard=guard,
                            tls_context=tls_context)
    assert isinstance(server, GuardedServer)
    thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
    thread.start()
    ae._servers.append(server)             # as start_server does: AE.shutdown() and server.shutdown() expect it
    return server
