"""End to end through the node, per backend, in one run: a real 61 × 512² series (pyradiomics lung2,
5 mm) sent by C-STORE, to all 301 derived files in a folder destination, with each backend's defaults.

    nice -n 10 .venv/bin/python bench/end_to_end.py                      # interpolation, then sr4zct
    .venv/bin/python bench/end_to_end.py --backends interpolation,sr4zct,cthnet --json e2e.json

For each backend it prints the time from the last instance received (storescu-like sender returns) to
the last derived file, and its ratio against the first backend listed (the reference, interpolation by
default), measured in the same run; and the derived series' self-check line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from dicom_node.app import Node
from dicom_node.config import parse_config
from synth.config import SR4ZCTConfig
from tests.integration.conftest import send_series
from tests.support.realct import real_ct_series


def run_once(backend: str, datasets: list[Any], work: Path, budget_s: float, timeout_s: float) -> dict[str, Any]:
    outbox = work / f"outbox-{backend}"
    cfg = parse_config({"node": {"port": 0, "storage_dir": str(work / f"var-{backend}")},
                        "series": {"quiet_period_s": 1.0},
                        "synth": {"backend": backend, "sr4zct": {"budget_s": budget_s}},
                        "web": {"enabled": False},
                        "folder_destinations": [{"name": "outbox", "path": str(outbox)}]})
    node = Node(cfg)
    node.start()
    try:
        expected = 5 * (len(datasets) - 1) + 1
        started = time.monotonic()
        send_series(datasets, node.scp.port)
        received = time.monotonic()
        deadline = received + timeout_s
        while time.monotonic() < deadline and len(list(outbox.rglob("*.dcm"))) < expected:
            time.sleep(0.1)
        finished = time.monotonic()
        files = sorted(outbox.rglob("*.dcm"))
        line = ""
        if files:
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            line = f"{first.SeriesDescription}; {first.get('ImageComments', '')!s}"
    finally:
        node.stop(drain_s=5.0)
    return {"backend": backend, "send_s": received - started, "end_to_end_s": finished - received,
            "derived": len(files), "expected": expected, "description": line}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="interpolation,sr4zct",
                        help="comma-separated; the first is the reference of the ratios")
    parser.add_argument("--budget-s", type=float, default=SR4ZCTConfig().budget_s, help="sr4zct's budget")
    parser.add_argument("--series", default="lung2")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = real_ct_series(args.series, work / "in")
        datasets = [pydicom.dcmread(p) for p in series.paths]
        for backend in args.backends.split(","):
            results.append(run_once(backend, datasets, work, args.budget_s, args.timeout_s))
    reference = results[0]["end_to_end_s"]
    print(f"{args.series}: {len(datasets)} x {datasets[0].Rows}x{datasets[0].Columns}")
    print("| backend | last instance received → all derived files (s) | vs " + results[0]["backend"] + " |")
    print("|---|---|---|")
    for r in results:
        r["ratio"] = r["end_to_end_s"] / reference
        print(f"| {r['backend']} | {r['end_to_end_s']:.1f} ({r['derived']}/{r['expected']}) | {r['ratio']:.1f}x |")
    for r in results:
        print(f"{r['backend']}: {r['description']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["derived"] == r["expected"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
