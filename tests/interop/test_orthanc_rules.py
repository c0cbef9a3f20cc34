"""The shipped Orthanc rule with NODE_DECIDES = true and the node's [[rules]] deciding: Orthanc forwards
every CT series but the node's own output; the node routes thick chest CT back to Orthanc, keeps a head
series as no_rule (with why) and rejects a thin one at selection. The derived series comes back to
Orthanc, and the Lua rule does not send it to the node again."""

from __future__ import annotations

import json
import re
import subprocess
import time
import tomllib
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import pytest

from dicom_node.app import Node
from dicom_node.config import parse_config
from dicom_node.ledger import queries
from tests.integration.conftest import send_series, wait_until
from tests.interop.peers import ORTHANC, free_port, require, stop_process
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

pytestmark = pytest.mark.interop
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def orthanc_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text(encoding="utf-8"))
    return data


def request(port: int, path: str) -> Any:
    user, password = next(iter(orthanc_json()["RegisteredUsers"].items()))
    auth = b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read() or b"null")


def test_orthanc_forwards_all_ct_and_the_node_rules_decide(tmp_path: Path) -> None:
    binary = require(ORTHANC)
    lua = (DEPLOY / "orthanc" / "autoroute.lua").read_text(encoding="utf-8")
    assert "local NODE_DECIDES = false" in lua
    (tmp_path / "autoroute.lua").write_text(lua.replace("local NODE_DECIDES = false", "local NODE_DECIDES = true"))
    dicom_port, http_port = free_port(), free_port()
    raw = tomllib.loads((DEPLOY / "node.compose.toml").read_text(encoding="utf-8"))
    raw["node"].update(host="127.0.0.1", port=0, storage_dir=str(tmp_path / "node"))
    raw["series"]["quiet_period_s"] = 1.0
    raw["web"].update(enabled=False)
    raw["destinations"][0].update(host="127.0.0.1", port=dicom_port)
    raw["rules"] = [{"name": "thick-chest-from-orthanc", "destinations": ["pacs"],
                     "match": {"CallingAE": "^ORTHANC$", "SliceThickness": [4.0, 6.0],
                               "BodyPartExamined": "^(CHEST|THORAX|LUNG)$"}}]
    node = Node(parse_config(raw))
    node.start()
    assert node.scp is not None
    config = orthanc_json()
    config.update(StorageDirectory=str(tmp_path / "orthanc"), IndexDirectory=str(tmp_path / "orthanc"),
                  DicomPort=dicom_port, HttpPort=http_port, RemoteAccessAllowed=False, StableAge=2,
                  SaveJobs=False, LuaScripts=[str(tmp_path / "autoroute.lua")])
    config["DicomModalities"]["SYNTHNODE"].update(Host="127.0.0.1", Port=node.scp.port)
    (tmp_path / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = tmp_path / "orthanc.log"
    orthanc = subprocess.Popen([binary, f"--logfile={log}", str(tmp_path / "orthanc.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        def up() -> bool:
            try:
                return bool(request(http_port, "/system"))
            except OSError:
                return False

        wait_until(up, 30.0, "Orthanc's REST API")
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
        wait_until(lambda: len(request(http_port, "/series")) == 4, 20.0, "the derived series in Orthanc")
        wait_until(lambda: "not sent: derived" in log.read_text(encoding="utf-8", errors="replace"), 20.0,
                   "the rule to see (and skip) the node's output")
        time.sleep(1.0)
        assert sorted(s.series_uid for s in queries.list_series(node.ledger.engine)[0]) == sorted(uids.values())
        done, head_view = view(node.ledger, uids["thick"]), view(node.ledger, uids["head"])
        assert done is not None and done.rule == "thick-chest-from-orthanc" and done.calling_ae == "ORTHANC"
        assert head_view is not None and re.search(r"BodyPartExamined 'HEAD' does not match", head_view.detail)
        rejected = view(node.ledger, uids["thin"])
        assert rejected is not None and rejected.reason == "spacing_out_of_range"
    finally:
        stop_process(orthanc)
        node.stop(drain_s=2.0)
