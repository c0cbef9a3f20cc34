"""`transfer_syntax` per destination, proven lossless by decoding what each real peer received.

One node, four destinations, all asking for the same compressed syntax: dcmtk storescp accepting
everything (+xa: gets it compressed), dcmtk storescp accepting only uncompressed (rejects the
compressed presentation context: the node falls back), Orthanc over STOW-RS, and a folder. Every
received instance is decoded and compared, pixel for pixel, with what the node wrote.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.encoding import SYNTAX_UIDS
from tests.integration.conftest import send_series, wait_until
from tests.interop.orthanc_web import OrthancWeb, running_orthanc_web
from tests.interop.peers import StoreSCP, start_storescp, stop_process, wait_until_stable
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

pytestmark = pytest.mark.interop

SLICES, DERIVED = 6, 26


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancWeb]:
    with running_orthanc_web(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def storescps(tmp_path: Path) -> Iterator[tuple[StoreSCP, StoreSCP]]:
    every = start_storescp(tmp_path / "every", tmp_path, "EVERYSCP")
    plain = start_storescp(tmp_path / "plain", tmp_path, "PLAINSCP", accept_compressed=False)
    yield every, plain
    for scp in (every, plain):
        if scp.process is not None:
            stop_process(scp.process)


def by_sop(datasets: list[Dataset]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def assert_same_pixels(received: dict[str, Dataset], derived_dir: Path, syntaxes: set[str]) -> None:
    assert len(received) == DERIVED
    for sop_uid, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID in syntaxes, sop_uid
        mine = dcmread(derived_dir / f"{sop_uid}.dcm")
        assert np.array_equal(ds.pixel_array, mine.pixel_array), sop_uid


@pytest.mark.parametrize("syntax", ["jpeg-ls-lossless", "jpeg2000-lossless", "rle-lossless"])
def test_each_destination_gets_its_syntax_losslessly(tmp_path: Path, syntax: str, orthanc: OrthancWeb,
                                                     storescps: tuple[StoreSCP, StoreSCP]) -> None:
    every, plain = storescps
    dicom = [{"name": scp.ae_title.lower(), "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port,
              "transfer_syntax": syntax} for scp in (every, plain)]
    raw = {
        "node": {"port": 0, "storage_dir": str(tmp_path / "var"), "spool_reserve_mb": TEST_RESERVE_MB},
        "series": {"quiet_period_s": 1.0},
        "send": {"retry_initial_s": 0.1, "max_attempts": 2, "timeout_s": 10.0},
        "destinations": dicom,
        "dicomweb_destinations": [{"name": "web", "url": orthanc.dicomweb_url, "transfer_syntax": syntax}],
        "folder_destinations": [{"name": "folder", "path": str(tmp_path / "folder"), "transfer_syntax": syntax}],
    }
    node = Node(parse_config(raw))
    node.start()
    try:
        source = make_ct_series(slices=SLICES, rows=32, cols=32, seed=3)
        assert node.scp is not None and send_series(source, node.scp.port) == [0] * SLICES
        uid = str(source[0].SeriesInstanceUID)

        def done() -> bool:
            found = view(node.ledger, uid)
            return found is not None and found.state in ("done", "failed")

        wait_until(done, 60.0, "the series to be sent everywhere")
        found = view(node.ledger, uid)
        assert found is not None and found.state == "done", found
        derived_uid, derived_dir = found.derived_series_uid, node.spool.derived_dir(found.derived_series_uid)
    finally:
        node.stop(drain_s=2.0)

    wanted = str(SYNTAX_UIDS[syntax])
    assert {str(dcmread(p).file_meta.TransferSyntaxUID) for p in derived_dir.glob("*.dcm")} == {
        str(ExplicitVRLittleEndian)}                              # the spool keeps the uncompressed original
    for scp in (every, plain):
        wait_until_stable(lambda scp=scp: len(scp.files()), settle_s=0.3, timeout_s=20.0)  # type: ignore[misc]
    assert_same_pixels(by_sop(every.datasets()), derived_dir, {wanted})
    assert_same_pixels(by_sop(plain.datasets()), derived_dir, {str(ExplicitVRLittleEndian),
                                                              str(ImplicitVRLittleEndian)})
    assert_same_pixels(by_sop([dcmread(p) for p in (tmp_path / "folder" / derived_uid).glob("*.dcm")]),
                       derived_dir, {wanted})
    series_id = orthanc.series_id(derived_uid)
    stored = [dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{i}/file")))
              for i in orthanc.get(f"/series/{series_id}")["Instances"]]
    assert_same_pixels(by_sop(stored), derived_dir, {wanted})
