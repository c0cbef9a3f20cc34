"""[[rules]], [series] skip_if_thin and [[webhooks]] in the config: parsed, and every mistake named."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main
from dicom_node.config import Condition, load_config, parse_config, to_dict
from dicom_node.errors import ConfigError

DESTS: dict[str, Any] = {
    "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
                     {"name": "cad", "ae_title": "CAD", "host": "127.0.0.1", "port": 4243}],
    "folder_destinations": [{"name": "outbox", "path": "out"}],
}
CONTRACT = """
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242

[[destinations]]
name = "cad"
ae_title = "CAD"
host = "127.0.0.1"
port = 4243

[[folder_destinations]]
name = "outbox"
path = "out"

[[rules]]
name = "sharp-kernel-to-cad"
match = { ConvolutionKernel = "^B$", SliceThickness = [4.0, 6.0], CallingAE = "^CT0[1-3]$" }
backend = "cthnet"
destinations = ["cad", "outbox"]

[[rules]]
name = "everything-else"
destinations = ["pacs"]
"""


def with_rules(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**DESTS, "rules": list(rules), **extra}


def test_the_contract_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(CONTRACT)
    cfg = load_config(path)
    first, second = cfg.rules
    assert first.name == "sharp-kernel-to-cad" and first.backend == "cthnet"
    assert first.destinations == ("cad", "outbox")
    assert first.match == (Condition("ConvolutionKernel", regex="^B$"), Condition("SliceThickness", low=4.0, high=6.0),
                           Condition("CallingAE", regex="^CT0[1-3]$"))
    assert second.match == () and second.backend == ""
    assert cfg.backends() == ["interpolation", "cthnet"]
    # check-config writes the rules back as they are written in the file
    assert to_dict(cfg)["rules"][0]["match"] == {"ConvolutionKernel": "^B$", "SliceThickness": [4.0, 6.0],
                                                 "CallingAE": "^CT0[1-3]$"}
    json.dumps(to_dict(cfg))


def test_no_rules_means_no_rules() -> None:
    cfg = parse_config(DESTS)
    assert cfg.rules == () and cfg.backends() == ["interpolation"]


RULE = {"name": "r1", "destinations": ["pacs"]}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({**RULE, "destinations": ["cad", "nowhere"]},
         r"cfg.toml: rules\[0\] \(r1\)\.destinations: unknown destination 'nowhere'; configured: "
         r"\['cad', 'outbox', 'pacs'\]"),
        ({**RULE, "destinations": []}, r"rules\[0\] \(r1\)\.destinations: expected a non-empty list"),
        ({**RULE, "destinations": ["pacs", "pacs"]}, r"rules\[0\] \(r1\)\.destinations: a destination is listed twice"),
        ({"name": "r1"}, r"rules\[0\] \(r1\)\.destinations: expected a non-empty list of destination names, got None"),
        ({**RULE, "match": {"ConvolutionKernel": "^B("}},
         r"rules\[0\] \(r1\)\.match\.ConvolutionKernel: bad regular expression '\^B\(': missing \)"),
        ({**RULE, "match": {"SliceThickness": [6.0, 4.0]}},
         r"rules\[0\] \(r1\)\.match\.SliceThickness: bad range \[6.0, 4.0\]: min is above max"),
        ({**RULE, "match": {"SliceThickness": [4.0]}},
         r"rules\[0\] \(r1\)\.match\.SliceThickness: bad range \[4.0\]: expected \[min, max\], two numbers"),
        ({**RULE, "match": {"SliceThickness": ["4", "6"]}}, r"match\.SliceThickness: bad range \['4', '6'\]"),
        ({**RULE, "match": {"SliceThickness": [float("nan"), 6.0]}},
         r"match\.SliceThickness: bad range \[nan, 6.0\]: both ends must be finite"),
        ({**RULE, "match": {"SeriesDescription": [1, 2]}},
         r"match\.SeriesDescription: bad range: SeriesDescription has VR LO, not a number"),
        ({**RULE, "match": {"CallingAE": [1, 2]}}, r"match\.CallingAE: bad range: CallingAE has VR AE"),
        ({**RULE, "match": {"ConvolutionKernal": "^B$"}},
         r"rules\[0\] \(r1\)\.match\.ConvolutionKernal: unknown DICOM keyword 'ConvolutionKernal'"),
        ({**RULE, "match": {"ReferencedImageSequence": "x"}},
         r"match\.ReferencedImageSequence: ReferencedImageSequence has VR SQ; rules match text and number"),
        ({**RULE, "match": {"SliceThickness": 5}}, r"match\.SliceThickness: expected a regular expression .* got 5"),
        ({**RULE, "match": "SliceThickness"}, r"rules\[0\] \(r1\)\.match: expected a table"),
        ({**RULE, "backend": "magic"},
         r"rules\[0\] \(r1\)\.backend: must be one of \('interpolation', 'cthnet', 'sr4zct'\)"),
        ({**RULE, "colour": "red"}, r"rules\[0\]: unknown option\(s\) \['colour'\]"),
        ({"destinations": ["pacs"]}, r"rules\[0\]\.name: a rule needs a name"),
        ({**RULE, "name": "has space"}, r"rules\[0\]\.name: a rule needs a name of 1-64"),
    ],
)
def test_rule_mistakes_name_the_file_the_rule_and_the_key(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(with_rules(rule), source="cfg.toml")


def test_rule_names_are_unique_and_rules_are_an_array() -> None:
    with pytest.raises(ConfigError, match=r"cfg.toml: rules: rule names must be unique, repeated: \['r1'\]"):
        parse_config(with_rules(RULE, RULE), source="cfg.toml")
    with pytest.raises(ConfigError, match=r"cfg.toml: rules must be an array of tables \(\[\[rules\]\]\)"):
        parse_config({**DESTS, "rules": {"name": "r1"}}, source="cfg.toml")


def test_a_rule_may_name_a_folder_destination() -> None:
    cfg = parse_config(with_rules({"name": "to-folder", "destinations": ["outbox"]}))
    assert cfg.rules[0].destinations == ("outbox",)


def test_check_config_names_the_rule_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONTRACT.replace('"^B$"', '"^B["'))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: rules[0] (sharp-kernel-to-cad).match.ConvolutionKernel: bad regular expression" in err


# -- skip_if_thin --------------------------------------------------------------------------------
def test_skip_if_thin_parses() -> None:
    cfg = parse_config({**DESTS, "series": {"quiet_period_s": 5, "skip_if_thin": {
        "destination": "pacs", "max_thickness_mm": 1.5}}})
    skip = cfg.series.skip_if_thin
    assert skip is not None and skip.destination == "pacs" and skip.max_thickness_mm == 1.5
    assert skip.timeout_s == 10.0 and cfg.series.quiet_period_s == 5.0
    assert parse_config(DESTS).series.skip_if_thin is None


@pytest.mark.parametrize(
    ("skip", "message"),
    [
        ({"destination": "outbox"},
         r"series.skip_if_thin.destination: 'outbox' is not a DICOM \(\[\[destinations\]\]\) "
         r"destination; C-FIND needs one of \['pacs', 'cad'\]"),
        ({"destination": "nowhere"}, r"series.skip_if_thin.destination: 'nowhere' is not a configured destination"),
        ({"destination": "pacs", "max_thickness_mm": 0.0}, r"series.skip_if_thin.max_thickness_mm must be positive"),
        ({"destination": "pacs", "timeout_s": 1000.0},
         r"series.skip_if_thin.timeout_s must be positive and at most 120"),
        ({"destination": "pacs", "limit": 1.0}, r"series.skip_if_thin: unknown option\(s\) \['limit'\]"),
        ({"max_thickness_mm": 1.0}, r"series.skip_if_thin: .*destination"),
        ("pacs", r"series.skip_if_thin: expected a table"),
    ],
)
def test_skip_if_thin_mistakes_are_named(skip: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**DESTS, "series": {"skip_if_thin": skip}}, source="cfg.toml")


# -- webhooks ------------------------------------------------------------------------------------
def test_webhooks_parse_with_defaults_and_the_token_stays_secret() -> None:
    cfg = parse_config({"webhooks": [{"url": "http://127.0.0.1:9/hook", "token": "s3cret"}]})
    (hook,) = cfg.webhooks
    assert hook.events == ["done", "failed", "rejected", "no_rule"] and hook.label == "127.0.0.1:9"
    text = json.dumps(to_dict(cfg))
    assert "s3cret" not in text and '"token": "(set)"' in text


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ({"url": "ftp://x/y"}, r"webhooks\[0\]: webhooks.url must be an http:// or https:// URL"),
        ({"url": "http://u:pw@x/y"}, r"webhooks.url must not hold a password"),
        ({"url": "http://x/", "events": ["done", "exploded"]}, r"webhooks.events: unknown event\(s\) \['exploded'\]"),
        ({"url": "http://x/", "events": []}, r"webhooks.events must be a non-empty list"),
        ({"url": "http://x/", "queue_size": 0}, r"webhooks.queue_size must be 1-100000, got 0"),
        ({"url": "http://x/", "retry_initial_s": 10.0, "retry_max_s": 1.0}, r"webhooks.retry_initial_s must be"),
        ({"url": "http://x/", "ca_file": "ca.pem"}, r"webhooks.ca_file is set but webhooks.url is not https"),
        ({"url": "http://x/", "colour": 1}, r"webhooks\[0\]: unknown option\(s\) \['colour'\]"),
    ],
)
def test_webhook_mistakes_are_named(hook: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"webhooks": [hook]}, source="cfg.toml")


def test_two_webhooks_to_one_host_need_names() -> None:
    hooks = [{"url": "http://h:1/a"}, {"url": "http://h:1/b"}]
    with pytest.raises(ConfigError, match=r"two webhooks share the name \['h:1'\]; give each a webhooks.name"):
        parse_config({"webhooks": hooks})
    cfg = parse_config({"webhooks": [{**hooks[0], "name": "a"}, {**hooks[1], "name": "b"}]})
    assert [h.label for h in cfg.webhooks] == ["a", "b"]


def test_the_example_config_documents_rules_webhooks_and_skip_if_thin() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "config" / "node.example.toml").read_text()
    for key in ("[[rules]]", "skip_if_thin", "[[webhooks]]"):
        assert key in text
    tomllib.loads(text)


@pytest.mark.parametrize("block", ["rules", "webhooks"])
def test_the_commented_examples_parse(block: str) -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "config" / "node.example.toml").read_text()
    inner = text.split(f"# -- {block} example --\n")[1].split(f"# -- end of {block} example --")[0]
    example = "\n".join(line.removeprefix("#").removeprefix(" ") for line in inner.splitlines())
    raw = tomllib.loads(text)
    raw.update(tomllib.loads(example))
    cfg = parse_config(raw)
    assert getattr(cfg, block)


def test_check_config_wants_cthnet_weights_when_a_rule_names_cthnet(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nstorage_dir = "{tmp_path / "var"}"\nport = 0\n[synth]\nweights = "{tmp_path / "no.pt"}"\n'
                    + CONTRACT.replace('path = "out"', f'path = "{tmp_path / "out"}"'))
    assert main(["check-config", "--config", str(path)]) == 2
    assert f"synth.weights: {tmp_path / 'no.pt'}: no such file" in capsys.readouterr().err


def test_a_rule_may_name_a_dicomweb_destination() -> None:
    cfg = parse_config({**DESTS, "dicomweb_destinations": [{"name": "pacs-web", "url": "https://pacs.example/dicom-web"}],
                        "rules": [{"name": "web", "destinations": ["pacs-web", "cad"]}]})
    assert cfg.rules[0].destinations == ("pacs-web", "cad")
