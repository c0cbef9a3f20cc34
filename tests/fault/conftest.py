"""Fault tests: the node as a real subprocess (kill -9, SIGTERM, restart) with real peers.

The node runs as ``.venv/bin/python -m dicom_node run --config X`` on a free loopback port. Peers are
pynetdicom SCUs/SCPs in the test process (a PACS stand-in that can refuse, be down, or answer slowly)
and dcmtk's storescu/storescp. The ledger is read directly through SQLAlchemy (SQLite or PostgreSQL).
Every wait polls a condition against a deadline; every process is stopped by its own id.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, create_engine, text

from tests.interop.peers import PeerError, echo, free_port, stop_process
from tests.interop.peers import wait_for as _wait_for
from tests.support.postgres import PostgresServer, postgres_bin, running_postgres

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
NODE_AE = "SYNTHNODE"
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 40.0
NETWORK_TIMEOUT_S = 15.0
POLL_S = 0.05


def python_for_node() -> str:
    return str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))


def wait_for(probe: Callable[[], Any], timeout_s: float, what: str,
             alive: Callable[[], str | None] | None = None, interval_s: float = POLL_S) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    return _wait_for(probe, timeout_s, what, interval_s=interval_s, alive=alive)


def stays(probe: Callable[[], bool], for_s: float, what: str) -> None:
    """Assert ``probe`` holds at every poll for ``for_s`` seconds (a bounded check that nothing happens)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert probe(), f"{what} stopped holding"
        time.sleep(0.1)


# -- config -------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(raw: dict[str, Any]) -> str:
    """Tables of scalars and arrays of tables: all a node config needs."""
    lines: list[str] = []
    for section, body in raw.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
            lines.append("")
    return "\n".join(lines)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# -- DICOM peers in the test process ------------------------------------------------------------


def echo_ok(port: int, ae_title: str = NODE_AE, tls: ssl.SSLContext | None = None, timeout_s: float = 3.0) -> bool:
    return echo(port, ae_title, timeout_s=timeout_s, tls=tls)


@dataclass(frozen=True, slots=True)
class Received:
    """What a PACS stand-in keeps of one instance (never the pixels)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    source_series_uid: str
    instance_number: int
    z_mm: float


def received_record(ds: Dataset) -> Received:
    refs = ds.get("ReferencedSeriesSequence") or []
    position = ds.get("ImagePositionPatient") or [0, 0, 0]
    return Received(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                    str(ds.get("PatientID", "")), str(refs[0].SeriesInstanceUID) if refs else "",
                    int(ds.get("InstanceNumber", 0) or 0), float(position[2]))


@dataclass
class PacsSCP:
    """A PACS stand-in: keeps a header record of every instance, can refuse, answer slowly, or be down."""

    ae_title: str = "PACS"
    status: int = 0x0000
    delay_s: float = 0.0
    tls: ssl.SSLContext | None = None
    port: int = 0
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self, port: int | None = None) -> PacsSCP:
        ae = AE(self.ae_title)
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(Verification)
        ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 30
        self.server = ae.start_server(("127.0.0.1", self.port if port is None else port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)], ssl_context=self.tls)
        self.port = int(self.server.server_address[1])
        return self

    def _on_store(self, event: evt.Event) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.status != 0:
            with self.lock:
                self.refused += 1
            return self.status
        record = received_record(event.dataset)
        with self.lock:
            self.received.append(record)
        return 0

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def records(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def series(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for r in self.records():
            out.setdefault(r.series_uid, []).append(r)
        return out

    def sop_uids(self, series_uid: str | None = None) -> set[str]:
        return {r.sop_uid for r in self.records() if series_uid in (None, r.series_uid)}

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def scu(calling_ae: str = "MODALITY", syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
        sop_classes: Sequence[str] = (CTImageStorage,)) -> AE:
    ae = AE(calling_ae)
    for sop_class in sop_classes:
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = NETWORK_TIMEOUT_S
    return ae


def send_datasets(datasets: Sequence[Dataset], port: int, *, calling_ae: str = "MODALITY",
                  called_ae: str = NODE_AE, tls: ssl.SSLContext | None = None) -> list[int]:
    """C-STORE each dataset over one association; every status (-1: no association / no response)."""
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets}) or [ExplicitVRLittleEndian]
    ae = scu(calling_ae, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=(tls, "127.0.0.1") if tls else None)
    return _store_each(assoc, datasets)


def _store_each(assoc: Association, items: Sequence[Dataset] | Sequence[Path]) -> list[int]:
    """C-STORE every item on an association and release it; -1 where there is no association or response."""
    if not assoc.is_established:
        return [-1] * len(items)
    statuses = []
    try:
        for item in items:
            response = assoc.send_c_store(item)
            statuses.append(int(response.Status) if "Status" in response else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


@contextlib.contextmanager
def raw_dataset_sending() -> Iterator[None]:
    """While active, ``send_c_store(path)`` sends the file's bytes after its meta unparsed (a raw dataset)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_files_raw(paths: Sequence[Path], port: int, syntax: str = ExplicitVRLittleEndian,
                   calling_ae: str = "MODALITY") -> list[int]:
    """C-STORE files as raw bytes: the request's SOP UIDs come from each file's meta, not its dataset."""
    ae = scu(calling_ae, [syntax])
    with raw_dataset_sending():
        return _store_each(ae.associate("127.0.0.1", port, ae_title=NODE_AE), paths)


# -- the node as a subprocess -------------------------------------------------------------------


def derived_count(thick_slices: int, factor: int = 5) -> int:
    return factor * (thick_slices - 1) + 1


@dataclass
class NodeProcess:
    """One node's config, storage and ledger; started, killed and restarted as real processes."""

    workdir: Path
    raw: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    extra_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _engine: Engine | None = None

    @property
    def port(self) -> int:
        return int(self.raw["node"]["port"])

    @property
    def storage_dir(self) -> Path:
        return Path(self.raw["node"]["storage_dir"])

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    @property
    def database_url(self) -> str:
        url = str(self.raw.get("database", {}).get("url", ""))
        return url or f"sqlite:///{self.storage_dir / 'state.db'}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"node-{self.runs}.log"

    def write_config(self, overrides: dict[str, Any] | None = None) -> None:
        if overrides:
            self.raw = merge(self.raw, overrides)
        self.config_path.write_text(to_toml(self.raw))

    def spawn(self, *args: str, log_name: str) -> subprocess.Popen[bytes]:
        """Start ``python -m dicom_node <args>`` with this config, logging to ``log_name``."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("DICOM_NODE_CONFIG", None)
        with (self.workdir / log_name).open("ab") as log:
            return subprocess.Popen([python_for_node(), "-m", "dicom_node", *args, "--config", str(self.config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)

    def start(self, *, overrides: dict[str, Any] | None = None, args: Sequence[str] = (),
              tls: ssl.SSLContext | None = None, wait: bool = True) -> NodeProcess:
        assert self.process is None or self.process.poll() is not None, "the node is already running"
        self.write_config(overrides)
        self.runs += 1
        self.process = self.spawn("run", *args, log_name=self.log_path.name)
        if wait and self.raw["node"].get("receive", True):
            wait_for(lambda: echo_ok(self.port, tls=tls), START_TIMEOUT_S, "the node to answer C-ECHO",
                     alive=self.died)
        return self

    def died(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"node exited with {self.process.returncode}; log tail:\n{self.log_tail()}"
        return None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit status (kills and fails if it does not stop in time)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
                raise AssertionError(f"the node did not stop within {timeout_s} s of SIGTERM") from None
        return self.process.returncode

    def cleanup(self) -> None:
        for proc in [self.process, *self.extra_processes]:
            if proc is not None:
                stop_process(proc, timeout_s=10)
        if self._engine is not None:
            self._engine.dispose()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    # -- the ledger, read directly ----------------------------------------------------------------
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def series_rows(self) -> dict[str, dict[str, Any]]:
        """series_uid → the ledger's row (state, reason, counts, lease); {} before the schema exists."""
        try:
            with self.engine().connect() as conn:
                rows = conn.execute(text("SELECT * FROM series")).mappings().all()
        except Exception:  # the schema is not there yet (first start still migrating)
            return {}
        return {str(r["series_uid"]): dict(r) for r in rows}

    def send_rows(self) -> list[dict[str, Any]]:
        with self.engine().connect() as conn:
            return [dict(r) for r in conn.execute(text("SELECT * FROM send_jobs")).mappings().all()]

    def instance_uids(self, series_uid: str) -> set[str]:
        with self.engine().connect() as conn:
            rows = conn.execute(text("SELECT sop_uid FROM instances WHERE series_uid = :uid"), {"uid": series_uid})
            return {str(r[0]) for r in rows}

    def state(self, series_uid: str) -> str:
        row = self.series_rows().get(series_uid)
        return "" if row is None else str(row["state"])

    def wait_state(self, series_uid: str, states: str | Sequence[str], timeout_s: float = 30.0) -> dict[str, Any]:
        wanted = (states,) if isinstance(states, str) else tuple(states)

        def probe() -> dict[str, Any] | None:
            row = self.series_rows().get(series_uid)
            return row if row is not None and row["state"] in wanted else None

        try:
            row: dict[str, Any] = wait_for(probe, timeout_s, f"series {series_uid} to be {'/'.join(wanted)}",
                                           alive=self.died if self.running() else None)
        except PeerError as exc:
            raise AssertionError(f"{exc}; ledger row: {self.series_rows().get(series_uid)}; "
                                 f"log tail:\n{self.log_tail(2500)}") from None
        return row

    def list_json(self) -> list[dict[str, Any]]:
        """``dicom-node list --json``, the administrator's view."""
        result = subprocess.run([python_for_node(), "-m", "dicom_node", "--log-level", "WARNING", "list",
                                 "--json", "--config", str(self.config_path)],
                                capture_output=True, text=True, timeout=60, cwd=self.workdir,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def leases(self) -> list[tuple[str, str, str]]:
        """(table, key, owner) of every lease still held in the ledger."""
        held = [("series", uid, str(r["lease_owner"])) for uid, r in self.series_rows().items() if r["lease_owner"]]
        held += [("send_jobs", f"{r['series_uid']}->{r['destination']}", str(r["lease_owner"]))
                 for r in self.send_rows() if r["lease_owner"]]
        return held


NodeFactory = Callable[..., NodeProcess]


def base_config(workdir: Path, *, destinations: Sequence[PacsSCP | tuple[str, str, int]] = (),
                outbox: bool = False, quiet_period_s: float = 1.0) -> dict[str, Any]:
    dests = []
    for i, d in enumerate(destinations):
        if isinstance(d, PacsSCP):
            dests.append({"name": f"pacs{i}" if i else "pacs", "ae_title": d.ae_title, "host": "127.0.0.1",
                          "port": d.port})
        else:
            name, ae_title, port = d
            dests.append({"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port})
    raw: dict[str, Any] = {
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(workdir / "var"), "dimse_timeout_s": 30.0, "network_timeout_s": 30.0,
                 "spool_reserve_mb": 0},     # these tests fill disks on purpose: no reserve beside them
        "series": {"quiet_period_s": quiet_period_s},
        "synth": {"backend": "interpolation"},
        "send": {"retry_initial_s": 0.3, "retry_max_s": 1.0, "max_attempts": 1000, "timeout_s": 10.0},
    }
    if dests:
        raw["destinations"] = dests
    if outbox:
        raw["folder_destinations"] = [{"name": "outbox", "path": str(workdir / "outbox")}]
    return raw


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[NodeFactory]:
    """Make (and, unless ``start=False``, start) node subprocesses; all are stopped at teardown."""
    made: list[NodeProcess] = []

    def make(*, destinations: Sequence[PacsSCP | tuple[str, str, int]] = (), outbox: bool = False,
             quiet_period_s: float = 1.0, overrides: dict[str, Any] | None = None, start: bool = True,
             args: Sequence[str] = (), tls: ssl.SSLContext | None = None, name: str = "") -> NodeProcess:
        workdir = tmp_path / (name or f"node{len(made)}")
        workdir.mkdir(parents=True, exist_ok=True)
        raw = merge(base_config(workdir, destinations=destinations, outbox=outbox, quiet_period_s=quiet_period_s),
                    overrides or {})
        node = NodeProcess(workdir, raw)
        made.append(node)
        if start:
            node.start(args=args, tls=tls)
        else:
            node.write_config()
        return node

    yield make
    for node in made:
        node.cleanup()


@pytest.fixture
def pacs_factory() -> Iterator[Callable[..., PacsSCP]]:
    made: list[PacsSCP] = []

    def make(**kwargs: Any) -> PacsSCP:
        start = kwargs.pop("start", True)
        scp = PacsSCP(**kwargs)
        made.append(scp)
        return scp.start() if start else scp

    yield make
    for scp in made:
        scp.stop()


# -- a small disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A private 64 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False)


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a free loopback port (tests/support/postgres.py)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    with running_postgres() as server:
        yield server


# -- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        """What a modality uses to call the node: verifies the node against our CA."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=fault-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=fault-test-{name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
