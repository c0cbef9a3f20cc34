"""The start-up checks that need no socket: folders, TLS files, weights, overlapping listeners."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import parse_config
from dicom_node.preflight import folder_problem, port_problems, runtime_problems, same_host, tls_problems


def test_a_missing_folder_is_made_to_prove_it_can_be_then_removed(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "var"
    assert folder_problem(target, keep_created=False) == ""
    assert not (tmp_path / "a").exists()
    assert folder_problem(target, keep_created=True) == ""
    assert target.is_dir() and list(target.iterdir()) == []          # the probe file is gone


def test_folders_that_cannot_be_used(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert folder_problem(tmp_path / "file", keep_created=False) == f"{tmp_path}/file is not a directory"
    assert folder_problem(tmp_path / "file" / "var", keep_created=False) == (
        f"{tmp_path}/file/var cannot be created: {tmp_path}/file is not a directory")


@pytest.mark.skipif(not Path("/sys/fs").is_dir(), reason="needs sysfs")
def test_a_folder_even_root_cannot_create(tmp_path: Path) -> None:
    assert folder_problem(Path("/sys/fs/dicom-node-var"), keep_created=False) in (
        "/sys/fs/dicom-node-var cannot be created: Operation not permitted",     # root
        "/sys/fs/dicom-node-var cannot be created: Permission denied")           # anyone else


def test_missing_tls_files_name_each_key(tmp_path: Path) -> None:
    problems = tls_problems("destinations.pacs", cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"),
                            ca=str(tmp_path / "ca.pem"))
    assert [str(p) for p in problems] == [
        f"destinations.pacs.tls_cert: {tmp_path}/c.pem: no such file",
        f"destinations.pacs.tls_key: {tmp_path}/k.pem: no such file",
        f"destinations.pacs.tls_ca: {tmp_path}/ca.pem: no such file",
    ]


def test_garbage_tls_files_are_not_certificates(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(bytes(range(256)))
    problems = tls_problems("node", cert=str(garbage), key=str(garbage), ca=str(garbage))
    assert [p.key for p in problems] == ["node.tls_ca", "node.tls_cert"]
    assert problems[0].message.startswith(f"{garbage}: no PEM CA certificate in it (")
    assert problems[1].message.startswith(f"{garbage}: no PEM certificate in it (")


def test_weights_must_exist_for_the_model_backend(tmp_path: Path) -> None:
    raw = {"node": {"storage_dir": str(tmp_path / "var")}, "synth": {"backend": "cthnet",
                                                                     "weights": str(tmp_path / "w.pt")}}
    problems = runtime_problems(parse_config(raw), receive=False, process=True, check_ports_free=False,
                                keep_created=False)
    assert [str(p) for p in problems] == [f"synth.weights: {tmp_path}/w.pt: no such file"]
    receiver = runtime_problems(parse_config(raw), receive=True, process=False, check_ports_free=False,
                                keep_created=False)
    assert receiver == []                                              # a receiver loads no model


def test_folder_destinations_are_checked_by_a_processing_node(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "folder_destinations": [{"name": "outbox", "path": str(tmp_path / "file" / "out")}]})
    problems = runtime_problems(cfg, receive=True, process=True, check_ports_free=False, keep_created=False)
    assert [p.key for p in problems] == ["folder_destinations.outbox.path"]


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("127.0.0.1", "127.0.0.1", True), ("0.0.0.0", "127.0.0.1", True), ("::", "10.0.0.5", True),
    ("localhost", "127.0.0.1", True), ("127.0.0.1", "10.0.0.5", False), ("127.0.0.1", "127.0.0.2", False),
])
def test_which_listeners_contend_for_a_port(a: str, b: str, overlap: bool) -> None:
    assert same_host(a, b) is overlap


def test_dicom_and_web_on_one_port(tmp_path: Path) -> None:
    cfg = parse_config({"node": {"port": 8080}, "web": {"enabled": True, "port": 8080, "host": "0.0.0.0"}})
    (problem,) = port_problems(cfg, receive=True, check_free=False)
    assert str(problem) == ("web.port: 8080 is node.port too (127.0.0.1 and 0.0.0.0 overlap): the DICOM and web "
                            "listeners need different ports")
    assert port_problems(cfg, receive=False, check_free=False) == []   # a worker listens for DICOM on nothing
