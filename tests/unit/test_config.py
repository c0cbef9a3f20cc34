from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import DEFAULT_CONFIG, load_config, parse_config
from dicom_node.errors import ConfigError


def test_embedded_default_needs_no_server_and_listens_on_loopback() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.node.host == "127.0.0.1" and cfg.node.port == 11112
    assert cfg.destinations == ()
    assert [f.name for f in cfg.folder_destinations] == ["outbox"]
    assert cfg.synth.backend == "interpolation"
    assert cfg.series.quiet_period_s == 10.0


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    cfg = parse_config({"node": {"storage_dir": "var"}, "folder_destinations": [{"name": "o", "path": "out"}]},
                       base_dir=tmp_path)
    assert cfg.node.storage_dir == str(tmp_path / "var")
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
        ({"node": {"max_pdu": 1000}}, r"node.max_pdu must be in 16384-16777216 bytes \(or 0, deprecated"),
        ({"node": {"max_pdu": 1 << 30}}, r"node.max_pdu must be in 16384-16777216 bytes.*got 1073741824"),
        ({"node": {"max_associations": 0}}, r"node.max_associations must be in 1-1000, got 0"),
        ({"node": {"max_pending": 0}}, r"node.max_pending must be in 1-10000, got 0"),
        ({"node": {"max_pending_per_address": 65}}, r"node.max_pending_per_address must be in 1-node.max_pending "
                                                     r"\(64\), got 65"),
        ({"node": {"association_request_timeout_s": 0}}, r"node.association_request_timeout_s must be in \(0, 120\]"),
        ({"node": {"association_request_timeout_s": float("nan")}}, r"association_request_timeout_s.*got nan"),
        ({"node": {"pdu_read_timeout_s": float("inf")}}, r"node.pdu_read_timeout_s must be in \(0, 600\], got inf"),
        ({"node": {"max_dataset_mb": 0}}, r"node.max_dataset_mb must be in 1-4096, got 0"),
        ({"node": {"max_dataset_mb": 64.0}}, r"node.max_dataset_mb: expected int, got 64.0"),
    ],
)
def test_invalid_configs_name_the_file_and_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, source="cfg.toml")


def test_association_policy_defaults_and_the_deprecated_unlimited_pdu() -> None:
    node = parse_config({}).node
    assert (node.max_pdu, node.max_pdu_bytes, node.max_associations, node.max_pending, node.max_pending_per_address,
            node.association_request_timeout_s, node.pdu_read_timeout_s, node.max_dataset_mb) == (
        1 << 20, 1 << 20, 32, 64, 16, 5.0, 30.0, 64)
    assert node.max_dataset_bytes == 64 << 20
    legacy = parse_config({"node": {"max_pdu": 0}}).node   # an existing config stays valid: 0 means the default
    assert legacy.max_pdu == 0 and legacy.max_pdu_bytes == 1 << 20
    assert parse_config({"node": {"max_pdu": 65536}}).node.max_pdu_bytes == 65536


def test_non_loopback_listener_allowed_with_allow_list_or_explicit_any() -> None:
    assert parse_config({"node": {"host": "0.0.0.0", "allowed_callers": ["PACS"]}}).node.host == "0.0.0.0"
    assert parse_config({"node": {"host": "0.0.0.0", "allow_any_caller": True}}).node.allow_any_caller


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
    assert '"ae_title": "SYNTHNODE"' in out and '"backend": "interpolation"' in out


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
