"""What a careless configuration does to `check-config` and `run`: one line naming the file and key, no traceback.

Each case is a real `python -m dicom_node` subprocess against a real obstacle: a port held by another
socket, TLS files of random bytes, a storage folder that cannot be made, a PostgreSQL port nobody serves.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_node.nodelock import NodeLock
from tests.fault.conftest import NodeFactory, NodeProcess, TlsFiles
from tests.fault.test_ledger_damage import cli, one_line
from tests.interop.peers import free_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def refused(node: NodeProcess, command: str, *, code: int = 2, invalid_file: bool = False) -> str:
    """The one stderr line of a command that must refuse to go on, without its prefix: "config error: " for
    check-config and an invalid file, "cannot start: " for what `run` finds around it."""
    result = cli(node, command)
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    line = one_line(result.stderr)
    prefix = "config error: " if command == "check-config" or invalid_file else "cannot start: "
    assert line.startswith(prefix), line
    return line[len(prefix):]


def both(node: NodeProcess, expected: str, *, invalid_file: bool = False) -> None:
    """check-config reports it and run refuses on it, with the same line."""
    assert refused(node, "check-config") == expected
    assert refused(node, "run", invalid_file=invalid_file) == expected
    assert not list(node.workdir.glob("*/state.db")), "run went on to make a ledger"


def test_a_port_in_use(node_factory: NodeFactory, busy_port: int) -> None:
    node = node_factory(start=False, overrides={"node": {"port": busy_port}})
    both(node, f"{node.config_path}: node.port: {busy_port} on 127.0.0.1: in use (is the node already running?)")


def test_the_web_port_in_use(node_factory: NodeFactory, busy_port: int) -> None:
    node = node_factory(start=False, overrides={"web": {"enabled": True, "port": busy_port}})
    both(node, f"{node.config_path}: web.port: {busy_port} on 127.0.0.1: in use (is the node already running?)")


def test_web_port_equal_to_the_dicom_port(node_factory: NodeFactory) -> None:
    node = node_factory(start=False)
    node.write_config({"web": {"enabled": True, "port": node.port}})
    both(node, f"{node.config_path}: web.port: {node.port} is node.port too (127.0.0.1 and 127.0.0.1 overlap): "
               "the DICOM and web listeners need different ports")


def test_garbage_tls_files(node_factory: NodeFactory, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(random.Random(5).randbytes(2048))
    node = node_factory(start=False, overrides={"node": {"tls_cert": str(garbage), "tls_key": str(garbage)}})
    both(node, f"{node.config_path}: node.tls_cert: {garbage}: no PEM certificate in it (NO_CERTIFICATE_OR_CRL_FOUND)")


def test_a_missing_tls_key_and_a_key_that_does_not_match(node_factory: NodeFactory, tls_files: TlsFiles,
                                                         tmp_path: Path) -> None:
    node = node_factory(start=False, overrides={"node": {"tls_cert": str(tls_files.server_cert),
                                                         "tls_key": str(tmp_path / "gone.key")}})
    both(node, f"{node.config_path}: node.tls_key: {tmp_path}/gone.key: no such file")
    node.write_config({"node": {"tls_key": str(tls_files.client_key)}})
    both(node, f"{node.config_path}: node.tls_key: {tls_files.client_key}: not a PEM private key for node.tls_cert "
               "(KEY_VALUES_MISMATCH)")


def test_a_destination_tls_ca_that_is_missing(node_factory: NodeFactory, tmp_path: Path) -> None:
    dest: dict[str, Any] = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
                            "tls": True, "tls_ca": str(tmp_path / "ca.pem")}
    node = node_factory(start=False, overrides={"destinations": [dest]})
    both(node, f"{node.config_path}: destinations.pacs.tls_ca: {tmp_path}/ca.pem: no such file")


def test_a_storage_dir_that_cannot_be_made(node_factory: NodeFactory, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    node = node_factory(start=False, overrides={"node": {"storage_dir": str(tmp_path / "a-file" / "var")}})
    both(node, f"{node.config_path}: node.storage_dir: {tmp_path}/a-file/var cannot be created: "
               f"{tmp_path}/a-file is not a directory")


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("series", "quiet_period_s", float("nan"), "series.quiet_period_s: must be a finite number, got nan"),
    ("send", "retry_max_s", float("inf"), "send.retry_max_s: must be a finite number, got inf"),
    ("send", "max_attempts", 10**9, "send: send.max_attempts must be in 1-1000, got 1000000000"),
])
def test_numbers_that_would_hang_the_node(node_factory: NodeFactory, section: str, key: str, value: float,
                                          message: str) -> None:
    node = node_factory(start=False, overrides={section: {key: value}})
    both(node, f"{node.config_path}: {message}", invalid_file=True)
    assert refused(node, "worker", invalid_file=True) == f"{node.config_path}: {message}"


def test_an_unreachable_database(node_factory: NodeFactory) -> None:
    port = free_port()
    url = f"postgresql+psycopg://node:hunter2@127.0.0.1:{port}/dicomnode"
    node = node_factory(start=False, overrides={"database": {"url": url}})
    shown = f"postgresql+psycopg://node:***@127.0.0.1:{port}/dicomnode"
    check = refused(node, "check-config")
    assert check.startswith(f"{node.config_path}: database.url: {shown}: cannot connect (") and "refused" in check
    run = cli(node, "run")
    assert run.returncode == 1
    line = one_line(run.stderr)
    assert "hunter2" not in run.stderr + check
    assert line.startswith(f"cannot start: database.url {shown}: cannot open the ledger (") and "refused" in line


def test_check_config_beside_a_running_node_and_a_second_run(node_factory: NodeFactory) -> None:
    node = node_factory()
    result = cli(node, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {node.config_path}: valid (a node is running on this storage_dir: "
                                    "its ports were not probed)")
    assert refused(node, "run") == (f"{node.config_path}: node.port: {node.port} on 127.0.0.1: in use "
                                    "(is the node already running?)")
    assert node.running()


def test_no_node_starts_while_a_rebuild_holds_the_storage(node_factory: NodeFactory) -> None:
    node = node_factory(start=False)
    node.storage_dir.mkdir(parents=True)
    with NodeLock(node.storage_dir, exclusive=True):                  # what rebuild-ledger holds
        assert refused(node, "run", code=1) == (f"{node.storage_dir}/node.lock is held: a ledger rebuild is running "
                                                f"on node.storage_dir {node.storage_dir}; start the node when it "
                                                "has finished")
    node.start()                                                       # released: it starts
