"""Hostile peers for the fault tests: raw sockets from a second loopback address, many honest senders at
once, a deflate bomb, and the node's own memory and CPU read from /proc (never wall time)."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.fault.conftest import NETWORK_TIMEOUT_S, NODE_AE, scu
from tests.support.ct_series import make_ct_series

HONEST = "127.0.0.1"
ATTACKER = "127.0.0.2"             # Linux routes all of 127/8 to lo: a second peer address on one machine
MIB = 1024 * 1024
HALF_REQUEST = b"\x01\x00\x00\x00\x01\x00"      # an A-ASSOCIATE-RQ header announcing 256 bytes, then nothing
ISSUE_HEADER = b"\x01\x00\xff\xff\xff\xf0"      # the header from issue #11: 4 GiB announced
A_ABORT_FROM_PROVIDER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"   # source 2, invalid PDU parameter value
P_DATA_TF = 0x04
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0009, "HOSTILE TEST"


# -- raw connections --------------------------------------------------------------------------------


def connect(port: int, payload: bytes = b"", source: str = ATTACKER) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if payload:
        sock.sendall(payload)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes | None:
    """What the node sent before it closed `sock`; None while it is still open after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    got = bytearray()
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except OSError:                                # reset: closed
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk
    return None


def still_open(sock: socket.socket) -> bool:
    return read_until_closed(sock, 0.01) is None


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def stream_zeros(sock: socket.socket, total_bytes: int, timeout_s: float = 60.0) -> int:
    """Send up to `total_bytes` of zeros; stops when the node closes the connection; bytes sent."""
    chunk = bytes(MIB)
    sent = 0
    deadline = time.monotonic() + timeout_s
    sock.settimeout(5)
    try:
        while sent < total_bytes and time.monotonic() < deadline:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    return sent


# -- honest senders ---------------------------------------------------------------------------------


def honest_senders(port: int, count: int, source: str = HONEST, seed: int = 0) -> list[int]:
    """`count` pynetdicom senders at once (a barrier), one small C-STORE each; each status or -1."""
    datasets = [make_ct_series(slices=1, rows=16, cols=16, seed=seed + i)[0] for i in range(count)]
    barrier = threading.Barrier(count)
    statuses = [-2] * count

    def send(i: int) -> None:
        ae = scu("HONEST")
        barrier.wait(timeout=30)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(source, 0))
        if not assoc.is_established:
            statuses[i] = -1
            return
        try:
            response = assoc.send_c_store(datasets[i])
            statuses[i] = int(response.Status) if "Status" in response else -1
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=2 * NETWORK_TIMEOUT_S)
    return statuses


def held_association(port: int, calling_ae: str = "MODALITY", source: str = HONEST) -> object:
    """An established association left open (the caller aborts it)."""
    ae = scu(calling_ae)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(source, 0))
    assert assoc.is_established, f"the association from {calling_ae} was not accepted"
    return assoc


def raw_socket_of(assoc: object) -> socket.socket:
    """The TCP socket under a pynetdicom association, to write bytes pynetdicom would never send."""
    sock = assoc.dul.socket.socket  # type: ignore[attr-defined]
    assert isinstance(sock, socket.socket)
    return sock


def rejection_of(port: int, calling_ae: str, called_ae: str = NODE_AE) -> tuple[int, int, int] | None:
    """(result, source, diagnostic) of the node's A-ASSOCIATE-RJ, or None when it accepted."""
    ae = AE(calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected, "neither accepted nor rejected"
    rj: Any = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


# -- the node's own resources ---------------------------------------------------------------------


def vm_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmRSS: now, VmHWM: the peak since start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@dataclass(frozen=True, slots=True)
class MemoryProbe:
    """The node's RSS before an attack; `growth_mib()` is its peak (VmHWM) since, above that."""

    pid: int
    rss_before_kib: int

    @classmethod
    def start(cls, pid: int) -> MemoryProbe:
        return cls(pid, vm_kib(pid, "VmRSS"))

    def growth_mib(self) -> float:
        return (vm_kib(self.pid, "VmHWM") - self.rss_before_kib) / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    """The fraction of one core the process used over `seconds` of wall time."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


# -- the dashboard's view -----------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def association_gauges(web_port: int) -> dict[str, float]:
    """dicom_node_associations{state} from /metrics."""
    _, text = http_get(web_port, "/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith('dicom_node_associations{state="'):
            state = line.split('"')[1]
            out[state] = float(line.rsplit(" ", 1)[1])
    return out


def readyz(web_port: int) -> tuple[int, dict[str, object]]:
    status, text = http_get(web_port, "/readyz")
    body: dict[str, object] = json.loads(text)
    return status, body


# -- data sets ------------------------------------------------------------------------------------------


def _encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def big_private_element_file(path: Path, *, zeros_mib: int, deflated: bool, seed: int) -> Dataset:
    """A CT instance with a private OB element of `zeros_mib` MiB of zeros before its Study and Series
    UIDs, written as a Part 10 file (Explicit VR LE, or Deflated: a few hundred KB on disk for 500 MiB).
    The big element is never held in memory here; returns the small instance it was built from."""
    ds = make_ct_series(slices=1, rows=16, cols=16, seed=seed)[0]
    big_tag = Tag(PRIVATE_GROUP, 0x1001)
    ds.add_new(Tag(PRIVATE_GROUP, 0x0010), "LO", PRIVATE_CREATOR)
    head, tail = Dataset(), Dataset()
    for elem in ds:
        (head if elem.tag < big_tag else tail).add(elem)
    big_header = struct.pack("<HH2sHL", PRIVATE_GROUP, 0x1001, b"OB", 0, zeros_mib * MIB)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    zeros = bytes(MIB)
    with path.open("wb") as fp:
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)  # type: ignore[arg-type]
        if deflated:
            packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            fp.write(packer.compress(_encoded(head) + big_header))
            for _ in range(zeros_mib):
                fp.write(packer.compress(zeros))
            fp.write(packer.compress(_encoded(tail)) + packer.flush())
        else:
            fp.write(_encoded(head) + big_header)
            for _ in range(zeros_mib):
                fp.write(zeros)
            fp.write(_encoded(tail))
    return ds
