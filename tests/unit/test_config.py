from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import DEFAULT_CONFIG, load_config, parse_config, to_dict
from dicom_node.errors import ConfigError


def test_embedded_default_needs_no_server_and_listens_on_loopback() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.node.listen.host == "127.0.0.1" and cfg.node.listen.port == 11112
    assert cfg.destinations == ()
    assert [f.name for f in cfg.folder_destinations] == ["outbox"]
    assert cfg.synth.backend == "sr4zct"             # the learned backend that measures best on real CT
    assert cfg.synth.device == "auto" and cfg.synth.sr4zct.budget_s == 40.0
    assert cfg.series.quiet_period_s == 10.0


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    cfg = parse_config({"node": {"storage_dir": "var"}, "folder_destinations": [{"name": "o", "path": "out"}]},
                       base_dir=tmp_path)
    assert cfg.node.storage.storage_dir == str(tmp_path / "var")
    assert cfg.folder_destinations[0].path == str(tmp_path / "out")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"node": {"colour": "red"}}, r"cfg.toml: node: unknown option\(s\) \['colour'\]"),
        ({"nodes": {}}, r"unknown section\(s\) \['nodes'\]"),
        ({"node": {"port": "11112"}}, r"node.port: expected int, got '11112'"),
        ({"node": {"port": 70000}}, r"node.port must be a TCP port"),
        ({"node": {"ae_title": "A" * 17}}, r"node.ae_title must be 1-16"),
        ({"node": {"receive_poll_us": 0}}, r"node.receive_poll_us must be in 1-1000, got 0"),
        ({"series": {"quiet_period_s": 0}}, r"series.quiet_period_s must be positive"),
        ({"series": {"min_spacing_mm": 7.0}}, r"min_spacing_mm must be positive and not above"),
        ({"synth": {"backend": "magic"}}, r"synth.backend must be one of"),
        ({"destinations": {"name": "x"}}, r"destinations must be an array of tables"),
        ({"destinations": [{"name": "p", "ae_title": "P", "host": "h"}]}, r"destinations\[0\].*port"),
        ({"destinations": [{"name": "p", "ae_title": "P", "host": "h", "port": 1}],
          "folder_destinations": [{"name": "p", "path": "x"}]}, r"destination names must be unique.*\['p'\]"),
        ({"node": {"host": "0.0.0.0"}}, r"listens beyond loopback with an empty node.allowed_callers"),
        ({"node": {"allowed_callers": ["OK", 3]}}, r"node.allowed_callers: expected a list of str"),
        ({"web": {"max_body_bytes": 100}}, r"cfg.toml: web: web.max_body_bytes must be 1024-16777216, got 100"),
        ({"web": {"auth_max_failures": 0}}, r"web.auth_max_failures must be 1-1000, got 0"),
        ({"web": {"auth_window_s": float("nan")}}, r"web.auth_window_s: must be a finite number, got nan"),
        ({"web": {"auth_lockout_s": 0.0}}, r"web.auth_lockout_s must be between 0.1 and 86400, got 0.0"),
        ({"web": {"auth_lockout_s": 120.0, "auth_lockout_max_s": 60.0}},
         r"web.auth_lockout_max_s must be between 120 and 604800, got 60.0"),
        ({"web": {"preview_max_slices": 1}}, r"web.preview_max_slices must be 16-4096, got 1"),
        ({"web": {"preview_wait_s": float("inf")}}, r"web.preview_wait_s: must be a finite number, got inf"),
        ({"node": {"max_pdu": 1000}}, r"node.max_pdu must be in 16384-16777216 bytes \(or 0, deprecated"),
        ({"node": {"max_pdu": 1 << 30}}, r"node.max_pdu must be in 16384-16777216 bytes.*got 1073741824"),
        ({"node": {"max_associations": 0}}, r"node.max_associations must be in 1-1000, got 0"),
        ({"node": {"max_pending": 0}}, r"node.max_pending must be in 1-10000, got 0"),
        ({"node": {"max_pending_per_address": 65}}, r"node.max_pending_per_address must be in 1-node.max_pending "
                                                     r"\(64\), got 65"),
        ({"node": {"association_request_timeout_s": 0}}, r"node.association_request_timeout_s must be in \(0, 120\]"),
        ({"node": {"association_request_timeout_s": float("nan")}}, r"association_request_timeout_s.*got nan"),
        ({"node": {"pdu_read_timeout_s": float("inf")}}, r"node.pdu_read_timeout_s: must be a finite number, got inf"),
        ({"node": {"pdu_read_timeout_s": 601.0}}, r"node.pdu_read_timeout_s must be in \(0, 600\], got 601.0"),
        ({"node": {"max_dataset_mb": 0}}, r"node.max_dataset_mb must be in 1-4096, got 0"),
        ({"node": {"max_dataset_mb": 64.0}}, r"node.max_dataset_mb: expected int, got 64.0"),
    ],
)
def test_invalid_configs_name_the_file_and_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, source="cfg.toml")


def test_association_policy_defaults_and_the_deprecated_unlimited_pdu() -> None:
    node = parse_config({}).node
    policy = node.associations
    assert (policy.max_pdu, policy.max_pdu_bytes, policy.max_associations, policy.max_pending,
            policy.max_pending_per_address, policy.association_request_timeout_s, policy.pdu_read_timeout_s,
            policy.max_dataset_mb) == (
        1 << 20, 1 << 20, 32, 64, 16, 5.0, 30.0, 64)
    assert node.associations.max_dataset_bytes == 64 << 20
    legacy = parse_config({"node": {"max_pdu": 0}}).node   # an existing config stays valid: 0 means the default
    assert legacy.associations.max_pdu == 0 and legacy.associations.max_pdu_bytes == 1 << 20
    assert parse_config({"node": {"max_pdu": 65536}}).node.associations.max_pdu_bytes == 65536


def test_non_loopback_listener_allowed_with_allow_list_or_explicit_any() -> None:
    assert parse_config({"node": {"host": "0.0.0.0", "allowed_callers": ["PACS"]}}).node.listen.host == "0.0.0.0"
    assert parse_config({"node": {"host": "0.0.0.0", "allow_any_caller": True}}).node.listen.allow_any_caller


def test_cthnet_without_weights_uses_the_shipped_phantom_weights() -> None:
    from synth.config import SHIPPED_WEIGHTS

    synth = parse_config({"synth": {"backend": "cthnet"}}).synth
    assert synth.weights_path == str(SHIPPED_WEIGHTS)
    assert parse_config({"synth": {"backend": "cthnet", "weights": "/w.pt"}}).synth.weights_path == "/w.pt"


def test_integer_accepted_where_float_expected() -> None:
    assert parse_config({"series": {"quiet_period_s": 3}}).series.quiet_period_s == 3.0


def test_check_config_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(DEFAULT_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert '"ae_title": "SYNTHNODE"' in out and '"backend": "sr4zct"' in out


def test_check_config_exits_2_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[series]\nquiet_period_s = "soon"\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "series.quiet_period_s" in err


def test_check_config_reports_invalid_toml_and_missing_file(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[node\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"series": {"quiet_period_s": float("nan")}},
         r"cfg.toml: series.quiet_period_s: must be a finite number, got nan"),
        ({"send": {"retry_max_s": float("inf")}}, r"cfg.toml: send.retry_max_s: must be a finite number, got inf"),
        ({"node": {"dimse_timeout_s": float("-inf")}}, r"node.dimse_timeout_s: must be a finite number, got -inf"),
        ({"retention": {"done_days": float("nan")}}, r"retention.done_days: must be a finite number"),
        ({"database": {"lease_s": float("inf")}}, r"database.lease_s: must be a finite number"),
        ({"synth": {"max_input_spacing_mm": float("inf")}}, r"synth.max_input_spacing_mm: must be a finite number"),
        ({"series": {"quiet_period_s": 10**400}}, r"series.quiet_period_s: must be a finite number, got an integer "
                                                  r"of 401 digits"),
        ({"send": {"max_attempts": 1001}}, r"send.max_attempts must be in 1-1000, got 1001"),
        ({"send": {"max_attempts": 0}}, r"send.max_attempts must be in 1-1000, got 0"),
        ({"send": {"retry_max_s": 86401}}, r"send.retry_max_s must be positive and at most 86400 \(one day\), "
                                           r"got 86401"),
        ({"send": {"timeout_s": 3601}}, r"send.timeout_s must be positive and at most 3600 \(one hour\)"),
        ({"node": {"network_timeout_s": 1e9}}, r"node.network_timeout_s must be positive and at most 3600"),
        ({"node": {"dimse_timeout_s": 0}}, r"node.dimse_timeout_s must be positive and at most 3600"),
        ({"node": {"max_pdu": -1}}, r"node.max_pdu must be in 16384-16777216 bytes .*got -1"),
        ({"series": {"quiet_period_s": 86401}}, r"series.quiet_period_s must be positive and at most 86400"),
        ({"retention": {"sweep_interval_s": 1e7}}, r"retention.sweep_interval_s must be positive and at most 86400"),
        ({"retention": {"done_days": 4000}}, r"retention.done_days must be in 0-3650 \(ten years\), got 4000"),
        ({"database": {"lease_s": 7200}}, r"database.lease_s must be in 5-3600 \(one hour\), got 7200"),
    ],
)
def test_numbers_must_be_finite_and_sane(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, source="cfg.toml")


def test_nan_in_a_file_names_the_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[series]\nquiet_period_s = nan\n")
    with pytest.raises(ConfigError, match=rf"^{path}: series.quiet_period_s: must be a finite number, got nan$"):
        load_config(path)


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = parse_config({"send": {"max_attempts": 1000, "retry_initial_s": 86400, "retry_max_s": 86400,
                                 "timeout_s": 3600}, "series": {"quiet_period_s": 86400},
                        "database": {"lease_s": 3600}, "retention": {"done_days": 3650, "sweep_interval_s": 86400}})
    assert cfg.send.max_attempts == 1000 and cfg.retention.done_days == 3650


def test_shipped_and_documented_configs_stay_valid() -> None:
    repo = Path(__file__).resolve().parents[2]
    files = sorted((repo / "config").glob("*.toml")) + sorted((repo / "deploy").glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        parse_config(tomllib.loads(path.read_text(encoding="utf-8")), source=str(path))
    blocks = [block for doc in ("README.md", "deploy/README.md")
              for block in re.findall(r"```toml\n(.*?)```", (repo / doc).read_text(encoding="utf-8"), re.S)]
    assert len(blocks) >= 2
    for block in blocks:
        parse_config(tomllib.loads(block), source="README")


def test_to_dict_never_shows_secrets() -> None:
    cfg = parse_config({"web": {"token": "hunter2-token"},
                        "database": {"url": "postgresql+psycopg://node:pa:ss@db.example:5432/dicomnode"}})
    shown = to_dict(cfg)
    assert shown["web"]["token"] == "(set)"
    assert shown["database"]["url"] == "postgresql+psycopg://node:***@db.example:5432/dicomnode"
    assert "hunter2" not in repr(shown) and "pa:ss" not in repr(shown)
    assert to_dict(parse_config({}))["web"]["token"] == ""              # unset stays visibly unset


def test_check_config_prints_no_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nstorage_dir = "{tmp_path / "var"}"\nport = 0\n'
                    '[web]\nenabled = true\nport = 0\ntoken = "hunter2-token"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"token": "(set)"' in out and "hunter2" not in out
    assert not (tmp_path / "var").exists()                              # checked, not created
