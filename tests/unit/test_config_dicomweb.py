"""[[dicomweb_destinations]] and `transfer_syntax` on every destination kind (dicom_node.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main
from dicom_node.config import DicomwebDestinationSection, parse_config, to_dict
from dicom_node.errors import ConfigError
from dicom_node.preflight import runtime_problems
from dicom_node.senders import SenderContext, build_sender
from dicom_node.senders.dicomweb import DicomwebSender

WEB = {"name": "pacs-web", "url": "https://pacs.example/dicom-web"}


def web(**keys: Any) -> dict[str, Any]:
    return {"dicomweb_destinations": [{**WEB, **keys}]}


def test_the_contract_keys_and_their_defaults(tmp_path: Path) -> None:
    cfg = parse_config(web(ca_file="ca.pem"), base_dir=tmp_path)
    (dest,) = cfg.dicomweb_destinations
    assert dest == DicomwebDestinationSection("pacs-web", "https://pacs.example/dicom-web", "", "", "",
                                              str(tmp_path / "ca.pem"), 50, "explicit-le")
    assert dest.stow_url == "https://pacs.example/dicom-web/studies"
    assert cfg.destination_names() == ["pacs-web"]
    assert cfg.all_destinations()[-1] is dest


@pytest.mark.parametrize(("keys", "message"), [
    ({"url": "ftp://pacs/x"}, r"dicomweb_destinations\[0\]: dicomweb_destinations.pacs-web.url must be an http"),
    ({"url": "https://"}, r"url must be an http:// or https:// URL with a host"),
    ({"url": "https://u:p@pacs/dw"}, r"url must not carry credentials: use dicomweb_destinations.pacs-web.username"),
    ({"url": "https://pacs/dw?x=1"}, r"url must be the service root"),
    ({"token": "t", "username": "u", "password": "p"}, r"give token \(bearer\) or username \+ password"),
    ({"username": "u"}, r"pacs-web.username and password must be set together"),
    ({"url": "http://pacs/dw", "ca_file": "ca.pem"}, r"pacs-web.ca_file is given but url is not https://"),
    ({"instances_per_request": 0}, r"pacs-web.instances_per_request must be 1-1000, got 0"),
    ({"instances_per_request": "50"}, r"instances_per_request: expected int"),
    ({"transfer_syntax": "jpeg-lossy"}, r"pacs-web.transfer_syntax must be one of explicit-le, jpeg-ls-lossless"),
    ({"bogus": 1}, r"dicomweb_destinations\[0\]: unknown option\(s\) \['bogus'\]"),
])
def test_bad_dicomweb_destinations_name_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(web(**keys))


def test_names_are_unique_across_kinds() -> None:
    raw = {**web(name="pacs"), "destinations": [{"name": "pacs", "ae_title": "P", "host": "h", "port": 104}]}
    with pytest.raises(ConfigError, match=r"destination names must be unique, repeated: \['pacs'\]"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"dicomweb_destinations must be an array of tables"):
        parse_config({"dicomweb_destinations": {"name": "x"}})


@pytest.mark.parametrize("kind", ["destinations", "folder_destinations"])
def test_transfer_syntax_on_the_other_kinds(kind: str) -> None:
    base = {"destinations": {"name": "p", "ae_title": "P", "host": "h", "port": 104},
            "folder_destinations": {"name": "p", "path": "/tmp/x"}}[kind]
    cfg = parse_config({kind: [{**base, "transfer_syntax": "rle-lossless"}]})
    assert cfg.all_destinations()[0].transfer_syntax == "rle-lossless"
    with pytest.raises(ConfigError, match=rf"{kind}.p.transfer_syntax must be one of explicit-le, jpeg-ls-lossless, "
                                          r"jpeg2000-lossless, rle-lossless, got 'j2k'"):
        parse_config({kind: [{**base, "transfer_syntax": "j2k"}]})


def test_secrets_never_shown_and_describe_names_only_the_auth_kind(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(web(token="tok-hunter2"))
    assert to_dict(cfg)["dicomweb_destinations"][0]["token"] == "(set)"
    sender = build_sender(cfg.dicomweb_destinations[0], SenderContext("SYNTHNODE", 5.0))
    assert isinstance(sender, DicomwebSender) and sender.kind == "dicomweb"
    assert sender.describe() == "STOW-RS https://pacs.example/dicom-web/studies (bearer token)"
    basic = parse_config(web(username="node", password="pw-hunter2"))
    assert to_dict(basic)["dicomweb_destinations"][0]["password"] == "(set)"
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nstorage_dir = "{tmp_path / "var"}"\nport = 0\n[[dicomweb_destinations]]\n'
                    'name = "w"\nurl = "https://pacs.example/dw"\nusername = "node"\npassword = "pw-hunter2"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"password": "(set)"' in out and "hunter2" not in out


def test_check_config_checks_the_ca_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for ca, expected in ((tmp_path / "missing.pem", "no such file"), (garbage, "no PEM CA certificate in it")):
        cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")}, **web(ca_file=str(ca))})
        problems = runtime_problems(cfg, receive=False, process=True, check_ports_free=False, keep_created=False)
        assert [p.key for p in problems] == ["dicomweb_destinations.pacs-web.ca_file"]
        assert expected in problems[0].message
