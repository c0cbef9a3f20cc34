"""The shipped Orthanc rule with NODE_DECIDES = true and the node's [[rules]] deciding: Orthanc forwards
every CT series but the node's own output; the node routes thick chest CT back to Orthanc, keeps a head
series as no_rule (with why) and rejects a thin one at selection. The derived series comes back to
Orthanc, and the Lua rule does not send it to the node again."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.ledger import queries
from tests.integration.conftest import send_series, wait_until
from tests.interop.orthanc_deploy import DEPLOY, orthanc_request, running_deploy_orthanc
from tests.interop.peers import ORTHANC, free_port, require
from tests.support import TEST_RESERVE_MB
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

pytestmark = pytest.mark.interop


def test_orthanc_forwards_all_ct_and_the_node_rules_decide(tmp_path: Path) -> None:
    require(ORTHANC)
    lua = (DEPLOY / "orthanc" / "autoroute.lua").read_text(encoding="utf-8")
    assert "local NODE_DECIDES = false" in lua
    (tmp_path / "autoroute.lua").write_text(lua.replace("local NODE_DECIDES = false", "local NODE_DECIDES = true"))
    dicom_port, http_port = free_port(), free_port()
    raw = tomllib.loads((DEPLOY / "node.compose.toml").read_text(encoding="utf-8"))
    raw["node"].update(host="127.0.0.1", port=0, storage_dir=str(tmp_path / "node"), spool_reserve_mb=TEST_RESERVE_MB)
    raw["series"]["quiet_period_s"] = 1.0
    raw["web"].update(enabled=False)
    raw["destinations"][0].update(host="127.0.0.1", port=dicom_port)
    raw["rules"] = [{"name": "thick-chest-from-orthanc", "destinations": ["pacs"],
                     "match": {"CallingAE": "^ORTHANC$", "SliceThickness": [4.0, 6.0],
                               "BodyPartExamined": "^(CHEST|THORAX|LUNG)$"}}]
    node = Node(parse_config(raw))
    node.start()
    assert node.scp is not None
    try:
        with running_deploy_orthanc(tmp_path, dicom_port=dicom_port, http_port=http_port, node_port=node.scp.port,
                                    lua=tmp_path / "autoroute.lua") as log:
            _node_rules_decide(node, dicom_port, http_port, log)
    finally:
        node.stop(drain_s=2.0)


def _node_rules_decide(node: Node, dicom_port: int, http_port: int, log: Path) -> None:
    thick = make_ct_series(slices=6, rows=32, cols=32, seed=51)
    thin = make_ct_series(slices=6, rows=32, cols=32, spacing_mm=1.0, seed=52)
    head = make_ct_series(slices=6, rows=32, cols=32, seed=53, series_description="HEAD 5mm")
    for ds in head:
        ds.BodyPartExamined = "HEAD"
    for source in (thick, thin, head):
        assert send_series(source, dicom_port, calling_ae="SCANNER", called_ae="ORTHANC") == [0] * 6
    uids = {name: str(s[0].SeriesInstanceUID) for name, s in (("thick", thick), ("thin", thin), ("head", head))}

    def state(name: str) -> str:
        found = view(node.ledger, uids[name])
        return found.state if found is not None else ""

    wait_until(lambda: (state("thick"), state("thin"), state("head")) == ("done", "rejected", "no_rule"), 90.0,
               "thick done, thin rejected, head no_rule")
    wait_until(lambda: len(orthanc_request(http_port, "/series")) == 4, 20.0, "the derived series in Orthanc")
    wait_until(lambda: "not sent: derived" in log.read_text(encoding="utf-8", errors="replace"), 20.0,
               "the rule to see (and skip) the node's output")
    time.sleep(1.0)
    assert sorted(s.series_uid for s in queries.list_series(node.ledger.engine)[0]) == sorted(uids.values())
    done, head_view = view(node.ledger, uids["thick"]), view(node.ledger, uids["head"])
    assert done is not None and done.rule == "thick-chest-from-orthanc" and done.calling_ae == "ORTHANC"
    assert head_view is not None and re.search(r"BodyPartExamined 'HEAD' does not match", head_view.detail)
    rejected = view(node.ledger, uids["thin"])
    assert rejected is not None and rejected.reason == "spacing_out_of_range"
