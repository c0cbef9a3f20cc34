"""Receive throughput and C-STORE response latency with concurrent senders into the node subprocess.

    .venv/bin/python bench/load.py [--senders 4] [--series 2] [--slices 61] [--size 64] [--repeats 3]
                                   [--quiet-period 10] [--json out.json]

The node runs as ``python -m dicom_node run`` (interpolation backend, a folder destination) on a free
loopback port. Each sender is its own process (so the senders do not share a GIL) with a pynetdicom
SCU (TCP_NODELAY, like the node): it reads its files before the start signal, then sends its series,
one association per series, timing every C-STORE from request to response. All senders start at the
same instant. Per repeat:

- throughput: instances (and MB of Part 10 files) acknowledged per second, from the first association
  request to the last release, over all senders;
- latency: p50 / p90 / p99 / max of the C-STORE round trips of every instance of every sender;
- processed: after the last store, the time until every series is `done` in the ledger (includes the
  quiet period, so it is reported but not a receive figure).

Each repeat uses fresh UIDs (the node never de-duplicates) and a fresh node. The quiet period defaults to
10 s so synthesis does not run during the receive measurement. Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dicom_node.config.node import Storage  # noqa: E402
from tests.interop.peers import start_node, stop_process, wait_for  # noqa: E402
from tests.support.ct_series import make_ct_series, write_series  # noqa: E402

PROCESS_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class SenderResult:
    sender: int
    started: float  # time.time() of the first association request
    finished: float  # time.time() after the last release
    latencies_s: list[float]
    statuses: list[int]
    megabytes: float


@dataclass(frozen=True, slots=True)
class RepeatResult:
    instances: int
    megabytes: float
    wall_s: float
    instances_per_s: float
    megabytes_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    processed_after_s: float
    failures: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _send(sender: int, folders: list[str], port: int, start_at: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from pydicom import dcmread
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    from dicom_node.netutil import set_nodelay

    series = [[dcmread(p) for p in sorted(Path(f).glob("*.dcm"))] for f in folders]
    megabytes = sum(p.stat().st_size for f in folders for p in Path(f).glob("*.dcm")) / 1e6
    ae = AE(f"BENCH{sender}")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, statuses = [], []
    started = time.time()
    for datasets in series:
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHNODE", evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
        if not assoc.is_established:
            statuses += [-1] * len(datasets)
            continue
        for ds in datasets:
            t0 = time.perf_counter()
            response = assoc.send_c_store(ds)
            latencies.append(time.perf_counter() - t0)
            statuses.append(int(response.Status) if "Status" in response else -1)
        assoc.release()
    queue.put(SenderResult(sender, started, time.time(), latencies, statuses, megabytes))


def done_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM series WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def run_once(args: argparse.Namespace, repeat: int, workdir: Path) -> RepeatResult:
    folders: list[list[str]] = []
    for s in range(args.senders):
        mine = []
        for k in range(args.series):
            source = make_ct_series(
                slices=args.slices,
                rows=args.size,
                cols=args.size,
                seed=100_000 * (repeat + 1) + 100 * s + k,
                patient_id=f"BENCH{repeat}{s}{k}",
            )
            mine.append(str(write_series(source, workdir / "in" / f"s{s}" / f"k{k}")[0].parent))
        folders.append(mine)
    node = start_node(workdir / "node", quiet_period_s=args.quiet_period,      # the default reserve, not a test's
                      node_settings=[f"spool_reserve_mb = {Storage().spool_reserve_mb}"])
    try:
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        start_at = time.time() + 8.0  # after every sender has imported and read its files
        procs = [
            ctx.Process(target=_send, args=(s, folders[s], node.port, start_at, queue)) for s in range(args.senders)
        ]
        for p in procs:
            p.start()
        results: list[SenderResult] = [queue.get(timeout=PROCESS_TIMEOUT_S) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        last_store = max(r.finished for r in results)
        total_series = args.senders * args.series
        db = node.storage_dir / "state.db"
        wait_for(
            lambda: done_count(db) == total_series,
            PROCESS_TIMEOUT_S,
            "every series to be done",
            interval_s=0.2,
            alive=node.died,
        )
        processed_after = time.time() - last_store
    finally:
        stop_process(node.process)
    latencies = [x for r in results for x in r.latencies_s]
    statuses = [x for r in results for x in r.statuses]
    wall = last_store - min(r.started for r in results)
    megabytes = sum(r.megabytes for r in results)
    return RepeatResult(
        instances=len(statuses),
        megabytes=round(megabytes, 2),
        wall_s=round(wall, 3),
        instances_per_s=round(len(statuses) / wall, 1),
        megabytes_per_s=round(megabytes / wall, 2),
        p50_ms=round(percentile(latencies, 50) * 1000, 2),
        p90_ms=round(percentile(latencies, 90) * 1000, 2),
        p99_ms=round(percentile(latencies, 99) * 1000, 2),
        max_ms=round(max(latencies) * 1000, 2),
        processed_after_s=round(processed_after, 2),
        failures=sum(1 for s in statuses if s != 0),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--series", type=int, default=2, help="series per sender")
    parser.add_argument("--slices", type=int, default=61)
    parser.add_argument("--size", type=int, default=64, help="rows = columns")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-period", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            result = run_once(args, repeat, Path(tmp))
        runs.append(result)
        print(
            f"repeat {repeat + 1}: {result.instances} instances ({result.megabytes} MB) in {result.wall_s} s: "
            f"{result.instances_per_s} inst/s, {result.megabytes_per_s} MB/s; C-STORE p50 {result.p50_ms} ms, "
            f"p90 {result.p90_ms} ms, p99 {result.p99_ms} ms, max {result.max_ms} ms; failures {result.failures}; "
            f"all done {result.processed_after_s} s after the last store",
            flush=True,
        )
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "median": {
            key: statistics.median(getattr(r, key) for r in runs)
            for key in (
                "instances_per_s",
                "megabytes_per_s",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "max_ms",
                "processed_after_s",
            )
        },
        "runs": [asdict(r) for r in runs],
    }
    print(json.dumps(summary["median"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(r.failures for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
