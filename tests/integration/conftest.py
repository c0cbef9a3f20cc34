"""The whole node in-process: a pynetdicom SCU as the modality, an in-process SCP as the PACS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.netutil import VERIFICATION
from synth.seam import Synthesizer
from tests.support import TEST_RESERVE_MB


@dataclass
class CollectingSCP:
    """A PACS stand-in that keeps what it receives and answers `status`."""

    ae_title: str = "PACS"
    status: int = 0x0000
    received: list[Dataset] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self, port: int = 0) -> None:
        ae = AE(self.ae_title)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(VERIFICATION)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        if self.status != 0:
            return self.status
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0

    def series(self) -> dict[str, list[Dataset]]:
        with self.lock:
            out: dict[str, list[Dataset]] = {}
            for ds in self.received:
                out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
            return out

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def send_series(datasets: list[Dataset], port: int, calling_ae: str = "MODALITY",
                called_ae: str = "SYNTHNODE") -> list[int]:
    """C-STORE each dataset over one association; returns every status (or -1 when not associated)."""
    ae = AE(calling_ae)
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    for syntax in syntaxes:
        ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return [-1] * len(datasets)
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture
def pacs() -> Iterator[CollectingSCP]:
    scp = CollectingSCP()
    scp.start()
    yield scp
    scp.stop()


NodeFactory = Callable[..., Node]


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    nodes: list[Node] = []

    def make(*, pacs: CollectingSCP | None = None, pacs_port: int | None = None, quiet_period_s: float = 1.0,
             storage: str = "var", extra: dict[str, Any] | None = None, start: bool = True,
             synthesizer: Synthesizer | None = None, **node_keys: Any) -> Node:
        raw: dict[str, Any] = {
            "node": {"port": 0, "storage_dir": str(tmp_path / storage), "spool_reserve_mb": TEST_RESERVE_MB,
                     **node_keys},
            "series": {"quiet_period_s": quiet_period_s},
            "send": {"retry_initial_s": 0.2, "retry_max_s": 0.4, "max_attempts": 3, "timeout_s": 5.0},
            "folder_destinations": [{"name": "outbox", "path": str(tmp_path / "outbox")}],
        }
        if pacs is not None or pacs_port is not None:
            raw["destinations"] = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                    "port": pacs.port if pacs is not None else pacs_port}]
        for key, value in (extra or {}).items():     # a table is merged; an array of tables ([[rules]]) is set
            raw[key] = value if isinstance(value, list) else {**raw.get(key, {}), **value}
        node = Node(parse_config(raw), synthesizer)
        if start:
            node.start()
            nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop(drain_s=2.0)
