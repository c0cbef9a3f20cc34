"""Real DICOM peers as subprocesses for the interop tests: the node, dcmtk and Orthanc.

Everything here is bounded: every wait polls against a deadline and every process is stopped by
its own id. Loopback only; ports come from binding to port 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support import TEST_RESERVE_MB

REPO = Path(__file__).resolve().parents[2]
STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
ECHOSCU = Path("/usr/bin/echoscu")
DCMCJPLS = Path("/usr/bin/dcmcjpls")
DCMCRLE = Path("/usr/bin/dcmcrle")
DCMCJPEG = Path("/usr/bin/dcmcjpeg")
DCIODVFY = Path("/usr/bin/dciodvfy")
TEST_RESERVE = f"spool_reserve_mb = {TEST_RESERVE_MB}"     # the [node] line of a test node's reserve
DCENTVFY = Path("/usr/bin/dcentvfy")
ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_GDCM = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")
NODE_AE = "SYNTHNODE"
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 30.0
SUBPROCESS_TIMEOUT_S = 120.0

T = TypeVar("T")


class PeerError(RuntimeError):
    """A peer failed to start, exited early, or a wait ran past its deadline."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``probe`` until it returns a truthy value; ``alive`` returns a message if a peer died."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if alive is not None and (message := alive()) is not None:
            raise PeerError(f"while waiting for {what}: {message}")
        if time.monotonic() > deadline:
            raise PeerError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def echo(port: int, ae_title: str, timeout_s: float = 2.0, tls: ssl.SSLContext | None = None) -> bool:
    """True when a C-ECHO to 127.0.0.1:port (over TLS with `tls`) succeeds."""
    ae = AE(ae_title="ECHOPROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=(tls, "127.0.0.1") if tls else None)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, wait, then SIGKILL; returns the exit status seen after SIGTERM (None if killed)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)
        return None


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Peer:
    """A DICOM application entity on loopback."""

    name: str
    ae_title: str
    port: int


@dataclass
class StoreSCP(Peer):
    """dcmtk storescp receiving into ``directory`` (one file per received instance, unique names)."""

    directory: Path = Path()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = Path()
    _headers: dict[Path, tuple[str, str, str]] = field(default_factory=dict)

    def died(self) -> str | None:
        return _died(self.process, self.log_path)

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.dcm") if p.is_file())

    def received(self) -> dict[Path, tuple[str, str, str]]:
        """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of every complete file received so far."""
        for path in self.files():
            if path in self._headers:
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
                self._headers[path] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            except (OSError, EOFError, ValueError, AttributeError, InvalidDicomError):
                continue  # storescp is still writing it
        return dict(self._headers)

    def series_in_study(self, study_uid: str) -> dict[str, list[Path]]:
        """SeriesInstanceUID -> files received for ``study_uid``."""
        found: dict[str, list[Path]] = {}
        for path, (study, series, _) in self.received().items():
            if study == study_uid:
                found.setdefault(series, []).append(path)
        return found

    def datasets(self, stop_before_pixels: bool = False) -> list[Dataset]:
        return [dcmread(p, stop_before_pixels=stop_before_pixels) for p in self.files()]


def start_storescp(directory: Path, log_dir: Path, ae_title: str = "CADSCP", *,
                   accept_compressed: bool = True) -> StoreSCP:
    """storescp accepting every syntax it knows (+xa), or with `accept_compressed=False` only uncompressed."""
    binary = require(STORESCP)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = log_dir / f"storescp-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "-aet", ae_title, "-od", str(directory), "+uf", "-fe", ".dcm",
             *(["+xa"] if accept_compressed else []), str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=_dcmtk_env(),
        )  # fmt: skip
    scp = StoreSCP("cad", ae_title, port, directory=directory, process=process, log_path=log_path)
    wait_for(lambda: echo(port, ae_title), START_TIMEOUT_S, "storescp to answer C-ECHO", alive=scp.died)
    return scp


def _died(process: subprocess.Popen[bytes] | None, log_path: Path) -> str | None:
    if process is not None and process.poll() is not None:
        return f"process exited with {process.returncode}; log tail:\n{_tail(log_path)}"
    return None


def require(path: Path) -> str:
    """The binary's path, or skip the calling test when it is not installed."""
    import pytest

    if not (path.exists() and os.access(path, os.X_OK)):
        pytest.skip(f"{path} is not installed")
    return str(path)


def storescu(
    files: Sequence[Path] | Path,
    port: int,
    ae_title: str,
    *options: str,
    calling_ae: str = "MODALITY",
    timeout_s: float = SUBPROCESS_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Send files (or a folder, recursively) with dcmtk storescu; raises on a non-zero exit."""
    binary = require(STORESCU)
    targets = [str(files)] if isinstance(files, Path) else [str(f) for f in files]
    scan = ["+sd", "+r"] if isinstance(files, Path) else []
    command = [binary, "-aet", calling_ae, "-aec", ae_title, *scan, *options, "127.0.0.1", str(port), *targets]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=_dcmtk_env())
    if result.returncode != 0 or "E: " in result.stdout + result.stderr:
        raise PeerError(f"storescu exit {result.returncode}: {(result.stdout + result.stderr)[-3000:]}")
    return result


def storescu_profile(directory: Path, syntax_uid: str) -> tuple[str, ...]:
    """storescu options that propose CT Image Storage with ONLY ``syntax_uid``.

    With the built-in -xt/-xv/-xr options storescu also proposes uncompressed syntaxes and silently
    decompresses when the peer refuses the compressed one; a profile leaves it no fallback.
    """
    config = directory / "storescu-only.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = " + syntax_uid + "\n"
        "[[PresentationContexts]]\n[OnlyCT]\nPresentationContext1 = CTImageStorage\\Only\n"
        "[[Profiles]]\n[OnlyProfile]\nPresentationContexts = OnlyCT\n"
    )
    return ("-xf", str(config), "OnlyProfile")


@dataclass
class RunningNode:
    """``python -m dicom_node run`` as a subprocess."""

    port: int
    ae_title: str
    storage_dir: Path
    outbox: Path | None
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    quiet_period_s: float

    def died(self) -> str | None:
        return _died(self.process, self.log_path)

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def rejected(self) -> dict[str, str]:
        """SeriesInstanceUID -> content of its ``reason`` file under ``<storage_dir>/rejected/``."""
        root = self.storage_dir / "rejected"
        reasons = {}
        for reason in root.glob("*/reason"):
            reasons[reason.parent.name] = reason.read_text(errors="replace").strip()
        return reasons

    def outbox_series(self) -> dict[str, list[Path]]:
        if self.outbox is None or not self.outbox.exists():
            return {}
        return {d.name: sorted(d.glob("*.dcm")) for d in self.outbox.iterdir() if d.is_dir()}


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_node_config(
    path: Path,
    *,
    port: int,
    storage_dir: Path,
    destinations: Sequence[Peer] = (),
    outbox: Path | None = None,
    quiet_period_s: float = 1,
    ae_title: str = NODE_AE,
    send_timeout_s: float = 5.0,
    send_retry_s: float = 1.0,
    node_settings: Sequence[str] = (),
) -> None:
    """The contract's TOML, plus short [send] timeouts so a failed C-STORE is retried within a test's time.

    pynetdicom's requestor reactor can swallow a C-STORE response under load (its pause handshake in
    association.py races with send_c_store), so a send may hang until the DIMSE timeout and be retried.
    """
    lines = [
        "[node]",
        f"ae_title = {_toml_str(ae_title)}",
        'host = "127.0.0.1"',
        f"port = {port}",
        f"storage_dir = {_toml_str(str(storage_dir))}",
        *node_settings,
        *([] if any(line.startswith("spool_reserve_mb") for line in node_settings) else [TEST_RESERVE]),
        "",
        "[series]",
        f"quiet_period_s = {quiet_period_s:g}",
        "",
        "[synth]",
        'backend = "interpolation"',
        "min_input_spacing_mm = 4.0",         # was [series] min/max_spacing_mm (deprecated)
        "max_input_spacing_mm = 6.0",
        "",
        "[send]",
        f"timeout_s = {send_timeout_s:g}",
        f"retry_initial_s = {send_retry_s:g}",
    ]
    for peer in destinations:
        lines += [
            "",
            "[[destinations]]",
            f"name = {_toml_str(peer.name)}",
            f"ae_title = {_toml_str(peer.ae_title)}",
            'host = "127.0.0.1"',
            f"port = {peer.port}",
        ]
    if outbox is not None:
        lines += ["", "[[folder_destinations]]", 'name = "outbox"', f"path = {_toml_str(str(outbox))}"]
    path.write_text("\n".join(lines) + "\n")


def start_node(
    workdir: Path,
    *,
    destinations: Sequence[Peer] = (),
    with_outbox: bool = True,
    quiet_period_s: float = 1,
    port: int | None = None,
    node_settings: Sequence[str] = (),
) -> RunningNode:
    """Start the node with a temp config and wait until it answers C-ECHO."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    storage = workdir / "var"
    outbox = storage / "outbox" if with_outbox else None
    config = workdir / "node.toml"
    write_node_config(
        config, port=port, storage_dir=storage, destinations=destinations, outbox=outbox,
        quiet_period_s=quiet_period_s, node_settings=node_settings,
    )  # fmt: skip
    log_path = workdir / "node.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
        )  # fmt: skip
    node = RunningNode(port, NODE_AE, storage, outbox, config, log_path, process, quiet_period_s)
    try:
        wait_for(lambda: echo(port, NODE_AE), START_TIMEOUT_S, "the node to answer C-ECHO", alive=node.died)
    except PeerError:
        stop_process(process)
        raise
    return node


@dataclass
class Orthanc:
    """Orthanc as a plain process with a temp JSON config; REST on ``http_port``."""

    name: str
    ae_title: str
    port: int
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    calls: list[str] = field(default_factory=list)

    def died(self) -> str | None:
        return _died(self.process, self.log_path)

    def request(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout_s) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)


AUTOROUTE_LUA = """
-- Route every stable CT series to the node, the node's own output included: the node, not this
-- rule, must recognise what it derived, or a PACS that forwards all CT would make a loop.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    local job = RestApiPost('/modalities/{modality}/store',
      DumpJson({{ Resources = {{ seriesId }}, Synchronous = false }}, true))
    print('autoroute: series ' .. seriesId .. ' -> {modality}: ' .. job)
  end
end
"""


def start_orthanc(workdir: Path, *, node_port: int, stable_age_s: int = 2, modality: str = "SYNTHNODE") -> Orthanc:
    """Orthanc with an OnStableSeries rule that routes CT series to the node at ``node_port``."""
    binary = require(ORTHANC)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "db").mkdir(exist_ok=True)
    lua = workdir / "autoroute.lua"
    lua.write_text(AUTOROUTE_LUA.format(modality=modality))
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "InteropPACS",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "Plugins": [str(ORTHANC_GDCM)] if ORTHANC_GDCM.exists() else [],
        "LuaScripts": [str(lua)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {modality: {"AET": NODE_AE, "Host": "127.0.0.1", "Port": node_port}},
        "StableAge": stable_age_s,
        "ExecuteLuaEnabled": False,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "HttpTimeout": 60,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    process = subprocess.Popen(
        [binary, f"--logfile={log_path}", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_dcmtk_env(), cwd=workdir,
    )  # fmt: skip
    orthanc = Orthanc("pacs", "ORTHANC", dicom_port, http_port, workdir, process, log_path)

    def answers() -> bool:
        try:
            return bool(orthanc.get("/system"))
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    try:
        wait_for(answers, START_TIMEOUT_S, "Orthanc's REST API", alive=orthanc.died)
    except PeerError:
        stop_process(process)
        raise
    return orthanc


def wait_until_stable(count: Callable[[], int], settle_s: float, timeout_s: float) -> int:
    """Poll ``count`` until it has not changed for ``settle_s``; returns the final count."""
    deadline = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return now
    raise PeerError(f"count still changing after {timeout_s:.0f} s (last {last})")


def run_tool(*command: str, timeout_s: float = SUBPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines for one file (an empty list means clean)."""
    result = run_tool(require(DCIODVFY), str(path))
    return [f"{path.name}: {line}" for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def dcentvfy(paths: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    return run_tool(require(DCENTVFY), *map(str, paths))


def normal_of(ds: Dataset) -> npt.NDArray[np.float64]:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def position_of(ds: Dataset) -> npt.NDArray[np.float64]:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


NodeFactory = Callable[..., RunningNode]
OrthancFactory = Callable[[int], Orthanc]
