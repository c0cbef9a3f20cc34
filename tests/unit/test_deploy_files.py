"""The deploy files, checked without Docker or systemd running.

Static checks: the compose file parses and agrees with the node's and Orthanc's configs (services,
ports, AE titles, volumes, the PostgreSQL URL); the Dockerfiles build from files that exist and run
the console script; the systemd units carry the hardening keys and an ExecStart the CLI accepts (and
`systemd-analyze verify` passes where it is installed); the Orthanc Lua rule excludes our own output;
the README's conformance statement lists every transfer syntax and status the node uses.

One test (marked interop) runs what compose runs as plain processes: Orthanc with deploy/orthanc's
config and Lua rule, and the node with deploy/node.compose.toml, then checks that thick chest CT is
routed to the node and that neither thin CT, other body parts nor the node's own output are.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import CTImageStorage

from dicom_node.app import Node
from dicom_node.cli import build_parser
from dicom_node.config import NodeConfig, parse_config
from dicom_node.ledger import queries
from dicom_node.provenance import MANUFACTURER
from dicom_node.receive import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    TRANSFER_SYNTAXES,
)
from tests.integration.conftest import send_series, wait_until
from tests.interop.orthanc_deploy import orthanc_json, orthanc_request, running_deploy_orthanc
from tests.interop.peers import ORTHANC, free_port, require
from tests.support.ct_series import make_ct_series
from tests.support.ledger import view

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ("dicom-node.service", "dicom-node-worker@.service")
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
    "SystemCallArchitectures": "native", "CapabilityBoundingSet": "",
}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def toml(name: str) -> dict[str, Any]:
    return tomllib.loads((DEPLOY / name).read_text(encoding="utf-8"))


def node_config(name: str) -> NodeConfig:
    return parse_config(toml(name), source=name)


def published(service: dict[str, Any]) -> dict[int, str]:
    """Container port → the host address it is published on ("" = every interface), same port number."""
    out = {}
    for entry in service.get("ports", []):
        *address, host_port, container = str(entry).split(":")
        assert host_port == container, f"{entry}: publish on the same port number as in the configs"
        out[int(container)] = address[0] if address else ""
    return out


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source, from "source:target[:ro]" entries."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section → key → values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- compose ----------------------------------------------------------------------------------------
def test_compose_services_and_profiles() -> None:
    services = compose()["services"]
    assert set(services) == {"orthanc", "node", "worker", "postgres"}
    assert "profiles" not in services["orthanc"] and "profiles" not in services["node"]
    assert services["postgres"]["profiles"] == ["postgres"] == services["worker"]["profiles"]
    assert services["node"]["depends_on"]["postgres"]["required"] is False
    assert services["node"]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert (DEPLOY / services["node"]["build"]["context"] / services["node"]["build"]["dockerfile"]).is_file()
    assert services["worker"]["command"] == ["worker"] and services["node"]["command"] == ["run"]
    for service in services.values():
        for source in mounts(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    assert set(compose()["volumes"]) == {"orthanc-db", "node-data", "pg-data"}


def test_compose_ports_and_names_agree_with_the_configs() -> None:
    services = compose()["services"]
    cfg = node_config("node.compose.toml")
    orthanc = orthanc_json()
    node_ports = published(services["node"])
    assert node_ports[cfg.node.listen.port] == ""                       # DICOM on every interface
    assert node_ports[cfg.web.port] == "127.0.0.1"              # dashboard on loopback only
    assert cfg.node.listen.host == cfg.web.host == "0.0.0.0"           # inside the container
    orthanc_ports = published(services["orthanc"])
    assert orthanc["DicomPort"] in orthanc_ports and orthanc_ports[orthanc["HttpPort"]] == "127.0.0.1"
    (pacs,) = cfg.destinations
    assert (pacs.host, pacs.port, pacs.ae_title) == ("orthanc", orthanc["DicomPort"], orthanc["DicomAet"])
    assert orthanc["DicomAet"] in cfg.node.listen.allowed_callers
    modality = orthanc["DicomModalities"]["SYNTHNODE"]
    expected = ("node", cfg.node.listen.port, cfg.node.identity.ae_title)
    assert (modality["Host"], modality["Port"], modality["AET"]) == expected
    node_mounts = mounts(services["node"])
    assert node_mounts[cfg.node.storage.storage_dir] == "node-data"
    assert node_mounts["/etc/dicom-node/node.toml"] == "./node.compose.toml"
    assert mounts(services["worker"])[cfg.node.storage.storage_dir] == "node-data"  # one shared spool
    lua = "/etc/orthanc/autoroute.lua"
    assert orthanc["LuaScripts"] == [lua] and mounts(services["orthanc"])[lua] == "./orthanc/autoroute.lua"
    assert mounts(services["orthanc"])[orthanc["StorageDirectory"]] == "orthanc-db"


def test_postgres_profile_config_matches_the_database_service() -> None:
    cfg = node_config("node.postgres.toml")
    env = compose()["services"]["postgres"]["environment"]
    expected = (f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
                f"@postgres:5432/{env['POSTGRES_DB']}")
    assert cfg.database.url == expected
    worker = compose()["services"]["worker"]
    assert worker["environment"]["DICOM_NODE_CONFIG"] == "/etc/dicom-node/node.postgres.toml"
    assert mounts(worker)["/etc/dicom-node/node.postgres.toml"] == "./node.postgres.toml"
    plain = toml("node.compose.toml")
    assert {k: v for k, v in toml("node.postgres.toml").items() if k != "database"} == plain


def test_gpu_override_uses_the_cuda_image() -> None:
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text(encoding="utf-8"))["services"]
    assert gpu["node"]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("node", "worker"):
        (device,) = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


# -- Dockerfiles ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "base"), [("Dockerfile", "nvidia/cuda:"), ("Dockerfile.cpu", "python:3.11")])
def test_dockerfiles(name: str, base: str) -> None:
    text = (DEPLOY / name).read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(args.get(f.strip("${}"), f).startswith(base) for f in froms)
    if base.startswith("nvidia"):
        assert "runtime" in args["CUDA_IMAGE"]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"{name} copies {path}, which does not exist"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    assert f'"{torch_pin}"' in text                             # the image installs the pinned torch
    assert re.search(r'^ENTRYPOINT \["dicom-node"\]$', text, flags=re.M)
    assert "dicom-node" in pyproject["project"]["scripts"]
    assert re.search(r"^USER dicom-node$", text, flags=re.M)
    cfg = node_config("node.compose.toml")
    assert f"EXPOSE {cfg.node.listen.port} {cfg.web.port}" in text
    assert f"127.0.0.1:{cfg.web.port}/healthz" in text
    ignore = (DEPLOY / f"{name}.dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!dicom_node/", "!synth/",
                                                  "!config/node.example.toml"]


# -- systemd ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_is_hardened(name: str) -> None:
    service = unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{name}: {key} should be {value!r}, is {service.get(key)}"
    assert service["User"] == ["dicom-node"] or service.get("DynamicUser") == ["yes"]
    assert "/var/lib/dicom-node" in service["ReadWritePaths"][0].split()
    assert service["DevicePolicy"] == ["closed"]
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert unit(name)["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize(("name", "command"), [(UNITS[0], "run"), (UNITS[1], "worker")])
def test_systemd_exec_start_is_our_console_script(name: str, command: str) -> None:
    service = unit(name)["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/dicom-node/.venv/bin/dicom-node"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"][Path(argv[0]).name] == "dicom_node.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.command == command and args.config == "/etc/dicom-node/node.toml"
    assert f"DICOM_NODE_CONFIG={args.config}" in service["Environment"]
    (pre,) = service["ExecStartPre"]
    assert build_parser().parse_args(shlex.split(pre)[1:]).command == "check-config"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    script = REPO / ".venv" / "bin" / "dicom-node"
    if not script.exists():
        pytest.skip("no .venv/bin/dicom-node to stand in for /opt/dicom-node/.venv/bin/dicom-node")
    names = []
    for name in UNITS:
        text = (DEPLOY / name).read_text(encoding="utf-8").replace("/opt/dicom-node/.venv/bin/dicom-node", str(script))
        target = tmp_path / name.replace("@.", "@0.")
        target.write_text(text, encoding="utf-8")
        names.append(str(target))
    result = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# -- Orthanc rule and the guide ---------------------------------------------------------------------
def test_orthanc_lua_rule_excludes_our_own_output() -> None:
    lua = (DEPLOY / "orthanc" / "autoroute.lua").read_text(encoding="utf-8")
    cfg = node_config("node.compose.toml")
    assert f"local OUR_MANUFACTURER = '{MANUFACTURER}'" in lua
    assert "ContributingEquipmentSequence" in lua and "'DERIVED'" in lua and "'SECONDARY'" in lua
    assert f"local NODE_AET = '{cfg.node.identity.ae_title}'" in lua and "RemoteAET" in lua
    assert f"local CT_IMAGE_STORAGE = '{CTImageStorage}'" in lua
    assert "local MIN_THICKNESS_MM = 4.0" in lua and "BodyPartExamined" in lua
    modality = re.search(r"local NODE_MODALITY = '(\w+)'", lua)
    assert modality is not None and modality.group(1) in orthanc_json()["DicomModalities"]
    assert "function OnStableSeries(" in lua and "SendToModality" not in lua    # series, not instances


def test_readme_has_the_conformance_statement() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for syntax in TRANSFER_SYNTAXES:
        assert str(syntax) in readme, f"{syntax.name} ({syntax}) is missing from the conformance statement"
    for status in (STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_DATASET_MISMATCH, STATUS_CANNOT_UNDERSTAND,
                   STATUS_PROCESSING_FAILURE):
        assert f"0x{status:04X}" in readme
    for text in (str(CTImageStorage), "1.2.840.10008.1.1", MANUFACTURER, "DERIVED\\SECONDARY", "/healthz",
                 "/readyz", "/metrics", "ProtectSystem", "allowed_callers"):
        assert text in readme, text


# -- compose, mirrored as plain processes ------------------------------------------------------------
@pytest.mark.interop
def test_orthanc_routes_thick_chest_ct_and_never_our_output(tmp_path: Path) -> None:
    require(ORTHANC)
    dicom_port, http_port = free_port(), free_port()
    raw = toml("node.compose.toml")
    raw["node"].update(host="127.0.0.1", port=0, storage_dir=str(tmp_path / "node"))
    raw["series"]["quiet_period_s"] = 1.0
    raw["web"].update(enabled=False)
    raw["destinations"][0].update(host="127.0.0.1", port=dicom_port)
    node = Node(parse_config(raw))
    node.start()
    assert node.scp is not None
    try:
        with running_deploy_orthanc(tmp_path, dicom_port=dicom_port, http_port=http_port, node_port=node.scp.port,
                                    lua=DEPLOY / "orthanc" / "autoroute.lua") as log:
            _route_thick_chest_ct_only(node, dicom_port, http_port, log)
    finally:
        node.stop(drain_s=2.0)


def _route_thick_chest_ct_only(node: Node, dicom_port: int, http_port: int, log: Path) -> None:
    thick = make_ct_series(slices=6, rows=32, cols=32, seed=41)
    thin = make_ct_series(slices=6, rows=32, cols=32, spacing_mm=1.0, seed=42)
    head = make_ct_series(slices=6, rows=32, cols=32, seed=43, series_description="HEAD 5mm")
    for ds in head:
        ds.BodyPartExamined = "HEAD"
    for source in (thick, thin, head):
        assert send_series(source, dicom_port, calling_ae="SCANNER", called_ae="ORTHANC") == [0] * 6
    uid = str(thick[0].SeriesInstanceUID)

    def state() -> str | None:
        summary = view(node.ledger, uid)
        return None if summary is None else summary.state

    wait_until(lambda: state() == "done", 60.0, "the thick series to come back from the node")
    wait_until(lambda: len(orthanc_request(http_port, "/series")) == 4, 20.0, "the derived series in Orthanc")
    wait_until(lambda: "not sent: derived" in log.read_text(encoding="utf-8", errors="replace"), 20.0,
               "the rule to see (and skip) the node's output")
    time.sleep(1.0)
    listed = queries.list_series(node.ledger.engine)[0]
    assert [s.series_uid for s in listed] == [uid]                     # only the thick chest CT came
    text = log.read_text(encoding="utf-8", errors="replace")
    assert re.search(r"slice thickness 1(\.0*)? mm is out of range", text)
    assert "not chest (BodyPartExamined HEAD)" in text
