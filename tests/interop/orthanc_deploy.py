"""Orthanc as deploy/orthanc/ ships it (orthanc.json, a Lua auto-routing script), forwarding to a node."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.conftest import wait_until
from tests.interop.peers import ORTHANC, require, stop_process

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def orthanc_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text(encoding="utf-8"))
    return data


def orthanc_request(port: int, path: str, body: bytes | None = None) -> Any:
    """GET (or POST `body`) Orthanc's REST API as the shipped config's registered user; the JSON answer."""
    user, password = next(iter(orthanc_json()["RegisteredUsers"].items()))
    auth = b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


@contextmanager
def running_deploy_orthanc(workdir: Path, *, dicom_port: int, http_port: int, node_port: int,
                           lua: Path) -> Iterator[Path]:
    """The shipped Orthanc config with `lua`, forwarding to the node on `node_port`; yields its log file."""
    binary = require(ORTHANC)
    config = orthanc_json()
    config.update(StorageDirectory=str(workdir / "orthanc"), IndexDirectory=str(workdir / "orthanc"),
                  DicomPort=dicom_port, HttpPort=http_port, RemoteAccessAllowed=False, StableAge=2,
                  SaveJobs=False, LuaScripts=[str(lua)])
    config["DicomModalities"]["SYNTHNODE"].update(Host="127.0.0.1", Port=node_port)
    (workdir / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = workdir / "orthanc.log"
    orthanc = subprocess.Popen([binary, f"--logfile={log}", str(workdir / "orthanc.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        def up() -> bool:
            try:
                return bool(orthanc_request(http_port, "/system"))
            except OSError:
                return False

        wait_until(up, 30.0, "Orthanc's REST API")
        yield log
    finally:
        stop_process(orthanc)
