"""End to end through the node with the sr4zct backend: a real 61 × 512² series (pyradiomics lung2, 5 mm)
sent by C-STORE, to all 301 derived files in a folder destination, with the default budget.

    nice -n 10 .venv/bin/python bench/sr4zct_node.py [--budget-s 60] [--series lung2]

Prints the wall time from the first C-STORE to the last derived file, and the backend's figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from dicom_node.app import Node
from dicom_node.config import parse_config
from synth.config import SR4ZCTConfig
from tests.integration.conftest import send_series
from tests.support.realct import real_ct_series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=SR4ZCTConfig().budget_s)
    parser.add_argument("--series", default="lung2")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = real_ct_series(args.series, work / "in")
        datasets = [pydicom.dcmread(p) for p in series.paths]
        outbox = work / "outbox"
        cfg = parse_config({"node": {"port": 0, "storage_dir": str(work / "var")}, "series": {"quiet_period_s": 1.0},
                            "synth": {"backend": "sr4zct", "sr4zct": {"budget_s": args.budget_s}},
                            "web": {"enabled": False},
                            "folder_destinations": [{"name": "outbox", "path": str(outbox)}]})
        node = Node(cfg)
        node.start()
        try:
            expected = 5 * (len(datasets) - 1) + 1
            started = time.monotonic()
            send_series(datasets, node.scp.port)
            sent = time.monotonic() - started
            deadline = started + args.timeout_s
            while time.monotonic() < deadline and len(list(outbox.rglob("*.dcm"))) < expected:
                time.sleep(0.2)
            total = time.monotonic() - started
            files = sorted(outbox.rglob("*.dcm"))
            done = len(files)
            if files:
                first = pydicom.dcmread(files[0], stop_before_pixels=True)
                print(f"{first.SeriesDescription!r}; {first.DerivationDescription[:160]!r}")
        finally:
            node.stop(drain_s=5.0)
        print(f"{args.series}: {len(datasets)} x {datasets[0].Rows}x{datasets[0].Columns} in {sent:.1f} s; "
              f"{done}/{expected} derived files after {total:.1f} s end to end (budget {args.budget_s:g} s)")
        return 0 if done == expected else 1


if __name__ == "__main__":
    sys.exit(main())
