"""Fixtures for the interop tests: real peers (the node, dcmtk storescp, Orthanc) as subprocesses.

Every test module here sets ``pytestmark = pytest.mark.interop``; each fixture skips its test when
its binary is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.peers import (
    NodeFactory,
    Orthanc,
    OrthancFactory,
    Peer,
    RunningNode,
    StoreSCP,
    start_node,
    start_orthanc,
    start_storescp,
    stop_process,
)
from tests.support.realct import RealSeries, RegistryUnreachableError, real_ct_series


@pytest.fixture
def cad(tmp_path: Path) -> Iterator[StoreSCP]:
    """dcmtk /usr/bin/storescp (TCP_NODELAY=1) as a PACS/CAD receiving the derived series."""
    scp = start_storescp(tmp_path / "cad", tmp_path)
    yield scp
    if scp.process is not None:
        stop_process(scp.process)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start ``python -m dicom_node run`` with a temp config; every node started is stopped at teardown."""
    started: list[RunningNode] = []

    def start(
        *, destinations: tuple[Peer, ...] = (), port: int | None = None, quiet_period_s: float = 1
    ) -> RunningNode:
        node = start_node(
            tmp_path / f"node{len(started)}", destinations=destinations, port=port, quiet_period_s=quiet_period_s
        )
        started.append(node)
        return node

    yield start
    for node in started:
        stop_process(node.process)


@pytest.fixture
def node(node_factory: NodeFactory, cad: StoreSCP) -> RunningNode:
    """The node with dcmtk storescp as its C-STORE destination and a folder destination."""
    return node_factory(destinations=(cad,))


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[OrthancFactory]:
    started: list[Orthanc] = []

    def start(node_port: int) -> Orthanc:
        orthanc = start_orthanc(tmp_path / f"orthanc{len(started)}", node_port=node_port)
        started.append(orthanc)
        return orthanc

    yield start
    for orthanc in started:
        stop_process(orthanc.process)


@pytest.fixture(scope="session")
def real_lung1(tmp_path_factory: pytest.TempPathFactory) -> RealSeries:
    """pyradiomics' lung1 (48 x 512², 5 mm) as a DICOM series; skips only if the registry is unreachable."""
    try:
        return real_ct_series("lung1", tmp_path_factory.mktemp("lung1"))
    except RegistryUnreachableError as exc:
        pytest.skip(f"real CT unavailable, package registry unreachable: {exc}")
