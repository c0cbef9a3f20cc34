"""What `run` would trip on, checked before it starts: files, folders, ports, the ledger.

`check-config` reports every problem (one line each, naming the key); `run` and `worker` refuse to
start on the first ones with the same lines instead of a traceback. The checks only look: a folder
that does not exist yet is created to prove it can be and removed again (unless `keep_created`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config import NodeConfig
from dicom_node.errors import StartupError
from dicom_node.ledger_check import ledger_problem, rebuild_hint, spool_work, sqlite_path
from dicom_node.netutil import client_tls_args, server_tls_context

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
DB_CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True, slots=True)
class Problem:
    key: str          # the dotted config key, e.g. "node.tls_cert" or "destinations.pacs.tls_ca"
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


# -- folders ------------------------------------------------------------------------------------------
def folder_problem(path: Path, *, keep_created: bool) -> str:
    """"" when `path` is (or can be made) a folder we can write files in; else why not."""
    created: list[Path] = []
    try:
        if not path.exists():
            missing = path
            while not missing.exists():
                created.append(missing)
                missing = missing.parent
            if not missing.is_dir():
                return f"{path} cannot be created: {missing} is not a directory"
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                return f"{path} cannot be created: {exc.strerror}"
        elif not path.is_dir():
            return f"{path} is not a directory"
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".check-")
        except OSError as exc:
            return f"{path} is not writable: {exc.strerror}"
        os.close(fd)
        os.unlink(probe)
        return ""
    finally:
        if not keep_created:
            for folder in created:       # deepest first; only what this check made, and only if still empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


# -- TLS ----------------------------------------------------------------------------------------------
def _file_problem(key: str, path: str) -> Problem | None:
    if not os.path.isfile(path):
        return Problem(key, f"{path}: no such file")
    if not os.access(path, os.R_OK):
        return Problem(key, f"{path}: not readable by this user")
    return None


def _ssl_reason(exc: ssl.SSLError | OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def tls_problems(prefix: str, *, cert: str, key: str, ca: str) -> list[Problem]:
    """Each TLS file exists, the certificate and the CA bundle parse, and the key matches the certificate."""
    problems = [p for p in (_file_problem(f"{prefix}.tls_cert", cert) if cert else None,
                            _file_problem(f"{prefix}.tls_key", key) if key else None,
                            _file_problem(f"{prefix}.tls_ca", ca) if ca else None) if p is not None]
    if problems:
        return problems
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(f"{prefix}.tls_ca", f"{ca}: no PEM CA certificate in it ({_ssl_reason(exc)})"))
    if cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(f"{prefix}.tls_cert", f"{cert}: no PEM certificate in it ({_ssl_reason(exc)})"))
            return problems
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(f"{prefix}.tls_key", f"{key}: not a PEM private key for {prefix}.tls_cert "
                                                         f"({_ssl_reason(exc)})"))
    return problems


def _all_tls_problems(cfg: NodeConfig, *, receive: bool, process: bool) -> list[Problem]:
    problems = []
    if receive and cfg.node.listen.tls_cert:
        listen = cfg.node.listen
        found = tls_problems("node", cert=listen.tls_cert, key=listen.tls_key, ca=listen.tls_ca)
        if not found:
            try:
                server_tls_context(cfg.node)
            except (ssl.SSLError, OSError) as exc:
                found = [Problem("node.tls_cert", f"cannot make the TLS context: {_ssl_reason(exc)}")]
        problems += found
    for dest in cfg.destinations if process else ():
        if not dest.tls:
            continue
        prefix = f"destinations.{dest.name}"
        found = tls_problems(prefix, cert=dest.tls_cert, key=dest.tls_key, ca=dest.tls_ca)
        if not found:
            try:
                client_tls_args(dest)
            except (ssl.SSLError, OSError) as exc:
                found = [Problem(f"{prefix}.tls", f"cannot make the TLS context: {_ssl_reason(exc)}")]
        problems += found
    for web in cfg.dicomweb_destinations if process else ():
        if not web.ca_file:
            continue
        key = f"dicomweb_destinations.{web.name}.ca_file"
        if (missing := _file_problem(key, web.ca_file)) is not None:
            problems.append(missing)
            continue
        try:
            ssl.create_default_context(cafile=web.ca_file)
        except (ssl.SSLError, OSError) as exc:
            problems.append(Problem(key, f"{web.ca_file}: no PEM CA certificate in it ({_ssl_reason(exc)})"))
    return problems


# -- ports --------------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_host(a: str, b: str) -> bool:
    """Whether two listeners on these hosts would contend for one port."""
    return a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS or (
        _is_loopback(a) and _is_loopback(b) and "localhost" in (a, b))


def _bind_error(host: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "in use (is the node already running?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
    return exc.strerror or str(exc)


def listen_error(key: str, host: str, port: int, exc: OSError) -> str:
    """One line for a listener that failed to start: the key and port, and why."""
    if isinstance(exc, ssl.SSLError):
        return f"node.tls_cert/node.tls_key: cannot load them ({_ssl_reason(exc)})"
    return f"{key} {port} on {host}: {_bind_error(host, exc)}"


def bind_problem(host: str, port: int) -> str:
    """"" when a listener could bind `host`:`port` now; else why not (the probe socket is closed at once)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"host {host!r} does not resolve ({exc.strerror})"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as the listeners do
        try:
            sock.bind(address)
        except OSError as exc:
            return _bind_error(host, exc)
    return ""


def port_problems(cfg: NodeConfig, *, receive: bool, check_free: bool) -> list[Problem]:
    listeners = []
    if receive:
        listeners.append(("node.port", cfg.node.listen.host, cfg.node.listen.port))
    if cfg.web.enabled:
        listeners.append(("web.port", cfg.web.host, cfg.web.port))
    listen = cfg.node.listen
    if len(listeners) == 2 and listen.port == cfg.web.port != 0 and same_host(listen.host, cfg.web.host):
        return [Problem("web.port", f"{cfg.web.port} is node.port too ({cfg.node.listen.host} and {cfg.web.host} "
                                    "overlap): the DICOM and web listeners need different ports")]
    problems = []
    for key, host, port in listeners if check_free else ():
        if port != 0 and (why := bind_problem(host, port)):
            problems.append(Problem(key, f"{port} on {host}: {why}"))
    return problems


# -- the rest -----------------------------------------------------------------------------------------
def weights_problem(cfg: NodeConfig) -> Problem | None:
    """The weights file, when [synth] backend or any rule's backend is cthnet."""
    if "cthnet" not in cfg.backends():
        return None
    return _file_problem("synth.weights", cfg.synth.weights_path)


def database_problem(cfg: NodeConfig) -> Problem | None:
    """SQLite: the ledger file is sound (see ledger_check). Others: the server answers."""
    path = sqlite_path(cfg.database_url)
    if path is not None:
        try:
            problem = ledger_problem(path, spool_work(cfg.storage_dir))
        except StartupError as exc:
            return Problem("database", str(exc))
        if problem:
            return Problem("database", f"ledger {path} {problem}; rebuild it with: {rebuild_hint(cfg.source)}")
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.config import redact_url

    engine = create_engine(cfg.database_url, connect_args={"connect_timeout": DB_CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return Problem("database.url", f"{redact_url(cfg.database_url)}: cannot connect ({first})")
    finally:
        engine.dispose()
    return None


def runtime_problems(cfg: NodeConfig, *, receive: bool, process: bool, check_ports_free: bool,
                     keep_created: bool) -> list[Problem]:
    """Everything `run` (receive and/or process) would trip on before it could do any work."""
    problems = []
    if why := folder_problem(cfg.storage_dir, keep_created=keep_created):
        problems.append(Problem("node.storage_dir", why))
    db_path = sqlite_path(cfg.database_url)
    if db_path is not None and db_path.parent != cfg.storage_dir and (
            why := folder_problem(db_path.parent, keep_created=keep_created)):
        problems.append(Problem("database.url", why))
    if process:
        for folder in cfg.folder_destinations:
            if why := folder_problem(Path(folder.path), keep_created=keep_created):
                problems.append(Problem(f"folder_destinations.{folder.name}.path", why))
    problems += _all_tls_problems(cfg, receive=receive, process=process)
    problems += port_problems(cfg, receive=receive, check_free=check_ports_free)
    if process and (weights := weights_problem(cfg)) is not None:
        problems.append(weights)
    return problems
