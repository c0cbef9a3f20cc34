"""Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb), optionally its Web Viewer and basic auth.

A plain process with a temp JSON config on loopback ports, as in peers.start_orthanc; every wait is
bounded and the process is stopped by its own id.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.interop.peers import (
    ORTHANC,
    ORTHANC_GDCM,
    START_TIMEOUT_S,
    PeerError,
    _dcmtk_env,
    free_port,
    require,
    stop_process,
    wait_for,
)

PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB = PLUGINS / "libOrthancDicomWeb.so"
WEBVIEWER = PLUGINS / "libOrthancWebViewer.so"
USER, PASSWORD = "node", "stow-test-password"


@dataclass
class OrthancWeb:
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    auth: bool

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base}/dicom-web"

    def request(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0) -> bytes:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            raw: bytes = response.read()
            return raw

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def series_id(self, series_uid: str) -> str | None:
        found = json.loads(self.request("POST", "/tools/lookup", series_uid.encode()))
        return next((f["ID"] for f in found if f.get("Type") == "Series"), None)

    def instance_count(self, series_uid: str) -> int:
        series_id = self.series_id(series_uid)
        return 0 if series_id is None else len(self.get(f"/series/{series_id}")["Instances"])


def _require_plugin(path: Path) -> None:
    import pytest

    if not path.exists():
        pytest.skip(f"{path} is not installed (Debian {path.stem.removeprefix('libOrthanc').lower()})")


@contextmanager
def running_orthanc_web(workdir: Path, *, auth: bool = False, webviewer: bool = False) -> Iterator[OrthancWeb]:
    binary = require(ORTHANC)
    _require_plugin(DICOMWEB)
    plugins = [DICOMWEB, *([ORTHANC_GDCM] if ORTHANC_GDCM.exists() else [])]
    if webviewer:
        _require_plugin(WEBVIEWER)
        plugins.append(WEBVIEWER)
    (workdir / "db").mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "Name": "StowPACS", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "Plugins": [str(p) for p in plugins], "HttpServerEnabled": True, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "DicomServerEnabled": True, "DicomPort": free_port(), "DicomAet": "ORTHANCWEB",
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False, "OverwriteInstances": True, "HttpTimeout": 60, "StableAge": 1,
    }  # fmt: skip
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    process = subprocess.Popen([binary, f"--logfile={log_path}", str(config_path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_dcmtk_env(), cwd=workdir)
    orthanc = OrthancWeb(http_port, workdir, process, log_path, auth)

    def answers() -> bool:
        try:
            return bool(orthanc.get("/system"))
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def died() -> str | None:
        return f"Orthanc exited with {process.returncode}" if process.poll() is not None else None

    try:
        wait_for(answers, START_TIMEOUT_S, "Orthanc's REST API", alive=died)
    except PeerError:
        stop_process(process)
        raise
    try:
        yield orthanc
    finally:
        stop_process(process)
