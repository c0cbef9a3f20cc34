"""Series per minute with one versus two `dicom-node worker` processes sharing a PostgreSQL ledger.

    .venv/bin/python bench/scaleout.py [--series 6] [--slices 16] [--size 128]

A receiver (`dicom-node run --receive-only`) and N workers run as separate processes on this machine,
sharing the ledger (a throwaway PostgreSQL) and the storage folder. Workers use the `cthnet` backend with
a tiny random-initialised CTHNet on the CPU (one torch thread each, so N workers can use N cores). All
series are sent first; the clock runs from the first completed series being claimable (last instance +
quiet period) to every derived series in the folder destination. Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.conftest import send_series  # noqa: E402
from tests.interop.peers import echo, free_port  # noqa: E402
from tests.support.ct_series import make_ct_series  # noqa: E402
from tests.support.postgres import running_postgres  # noqa: E402
from tests.support.tiny_cthnet import tiny_checkpoint  # noqa: E402

QUIET_S = 1.0


def run(workers: int, n_series: int, slices: int, size: int, db_url: str, weights: Path, workdir: Path) -> float:
    port = free_port()
    storage, outbox = workdir / f"w{workers}" / "var", workdir / f"w{workers}" / "outbox"
    config = workdir / f"w{workers}" / "node.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"""
[node]
port = {port}
storage_dir = "{storage}"
[series]
quiet_period_s = {QUIET_S}
[synth]
backend = "cthnet"
weights = "{weights}"
device = "cpu"
min_consistency_db = 0.0     # random weights make garbage: without this every series would fall back to BIS
max_lung_bias_hu = 3072.0
[database]
url = "{db_url}"
[[folder_destinations]]
name = "outbox"
path = "{outbox}"
""")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "run", "--receive-only", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not echo(port, "SYNTHNODE"):
            if time.monotonic() > deadline:
                raise TimeoutError("receiver did not start")
            time.sleep(0.1)
        procs += [
            subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "worker", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            for _ in range(workers)
        ]
        time.sleep(5)  # workers loaded (torch import, weights)
        want = 5 * (slices - 1) + 1
        for i in range(n_series):
            series = make_ct_series(slices=slices, rows=size, cols=size, seed=workers * 1000 + i)
            assert send_series(series, port) == [0] * slices
        started = time.monotonic() + QUIET_S
        while True:
            done = sum(1 for d in outbox.glob("*") if len(list(d.glob("*.dcm"))) == want) if outbox.exists() else 0
            if done == n_series:
                return time.monotonic() - started
            if time.monotonic() - started > 1800:
                raise TimeoutError(f"only {done}/{n_series} series after 30 min")
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--series", type=int, default=6)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        weights = workdir / "tiny.pt"
        tiny_checkpoint(weights, note="none: random weights, for a benchmark")
        results = {}
        for workers in (1, 2):
            with running_postgres() as pg:
                seconds = run(workers, args.series, args.slices, args.size, pg.url, weights, workdir)
            results[workers] = seconds
            print(
                f"{workers} worker(s): {args.series} series in {seconds:.1f} s = "
                f"{args.series / seconds * 60:.1f} series/min",
                file=sys.stderr,
            )
    print(f"{args.series} series of {args.slices}x{args.size}x{args.size}, tiny CTHNet on CPU, {os.cpu_count()} CPUs\n")
    print("| workers | seconds | series/min | speed-up |\n|---|---|---|---|")
    for workers, seconds in results.items():
        print(f"| {workers} | {seconds:.1f} | {args.series / seconds * 60:.1f} | {results[1] / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
