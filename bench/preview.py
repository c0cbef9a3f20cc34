"""Time the dashboard's preview images of a big series, cold (first request) and from the cache.

    .venv/bin/python bench/preview.py [--slices 161] [--matrix 512] [--workdir DIR]

Runs a node in this process (interpolation backend, no destination, the web server on a free
loopback port), C-STOREs a synthetic `--slices`-slice 5-mm series (161 → an 801-slice 1-mm derived
series), waits until it is done, then GETs each preview over HTTP and prints the wall time of every
request. The first request of each of input/output reads the files (cold); the other view of the
same series comes from the cache. Then, in this process and interleaved so that machine load hits
both alike, it times drawing the output's two views from all its files (what every cold preview did
before `web.preview_max_slices`) against the sampled read, as wall time and this thread's CPU time.
Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))              # before bench/, whose synth.py would shadow the package

import httpx  # noqa: E402

from dicom_node.app import Node  # noqa: E402
from dicom_node.config import parse_config  # noqa: E402
from dicom_node.web.preview import VIEWS, load_sections, png_bytes, render  # noqa: E402
from tests.integration.conftest import send_series, wait_until  # noqa: E402
from tests.support.ct_series import make_ct_series  # noqa: E402

DONE_TIMEOUT_S = 600.0
HTTP_TIMEOUT_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=161)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        raw = {"node": {"port": 0, "storage_dir": str(Path(tmp) / "var"), "fsync": False},
               "series": {"quiet_period_s": 0.5},
               "web": {"enabled": True, "port": 0, "token": "bench-token"}}
        node = Node(parse_config(raw))
        node.start()
        try:
            source = make_ct_series(slices=args.slices, rows=args.matrix, cols=args.matrix)
            uid = str(source[0].SeriesInstanceUID)
            assert node.scp is not None
            if send_series(source, node.scp.port) != [0] * len(source):
                raise SystemExit("the node refused an instance")
            del source

            def done() -> bool:
                summary = node.ledger.summary(uid)
                return summary is not None and summary.state == "done"

            wait_until(done, DONE_TIMEOUT_S, f"series {uid} to be done")
            derived = node.ledger.summary(uid)
            print(f"series {uid}: {args.slices} slices in, {derived.derived_count if derived else '?'} out")
            with httpx.Client(base_url=node.web.url, timeout=HTTP_TIMEOUT_S) as client:
                for which in ("output", "input"):
                    for view in ("coronal", "sagittal", "coronal"):
                        started = time.perf_counter()
                        response = client.get(f"/series/{uid}/preview/{which}/{view}.png")
                        elapsed = time.perf_counter() - started
                        print(f"{which:6} {view:8} HTTP {response.status_code} {len(response.content):7d} B "
                              f"{elapsed:6.2f} s")
            assert derived is not None
            files = node.spool.derived_files(derived.derived_series_uid)
            limit = node.cfg.web.preview_max_slices
            times: dict[str, list[tuple[float, float]]] = {"all": [], "sampled": []}
            for _ in range(args.repeats):
                for name, max_slices in (("all", None), ("sampled", limit)):
                    wall, cpu = time.perf_counter(), time.thread_time()
                    sections = load_sections(files, max_slices)
                    for view in VIEWS:
                        png_bytes(render(sections, view))
                    times[name].append((time.perf_counter() - wall, time.thread_time() - cpu))
            for name, runs in times.items():
                wall_s, cpu_s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
                print(f"both views from {'all' if name == 'all' else limit} of {len(files)} files: "
                      f"median wall {wall_s:.2f} s, CPU {cpu_s:.2f} s ({args.repeats} runs)")
        finally:
            node.stop(drain_s=2.0)


if __name__ == "__main__":
    main()
