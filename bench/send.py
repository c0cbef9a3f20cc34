"""C-STORE send rate: the node's SCU against dcmtk storescu, the same files to dcmtk storescp, one run.

    .venv/bin/python bench/send.py [--slices 301] [--size 512] [--repeats 3] [--json out.json]

A derived-size series (301 slices of 512², Explicit VR Little Endian, as the node writes them) is
written once. Each repeat sends it to a fresh dcmtk storescp (``TCP_NODELAY=1``, ``+uf``, one per
sender and repeat so both write into an empty folder) twice, in alternating order:

- **dcmtk storescu** (``TCP_NODELAY=1 storescu +sd +r``, one association): its wall time;
- **the node**: ``DicomSender.deliver`` in this process, as the send stage calls it (association,
  every C-STORE acknowledged and its status checked, release): its wall time.

Both are checked to have delivered every instance. Medians are reported with the node's time as a
ratio of storescu's (target: at most 1.5x). Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dicom_node.config import DestinationSection  # noqa: E402
from dicom_node.senders import SenderContext  # noqa: E402
from dicom_node.senders.dimse import DicomSender  # noqa: E402
from tests.interop.peers import STORESCP, STORESCU, PeerError, StoreSCP, start_storescp, stop_process  # noqa: E402
from tests.support.ct_series import make_ct_series, write_series  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    slices: int
    size: int
    megabytes: float
    repeats: int
    seconds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])


def with_storescp(workdir: Path, tag: str, slices: int, send: object) -> float:
    """Start a storescp into an empty folder, time `send(scp)`, check every instance arrived, stop it."""
    target = workdir / f"recv-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    scp: StoreSCP = start_storescp(target, workdir, ae_title="BENCHSCP")
    try:
        assert callable(send)
        started = time.perf_counter()
        send(scp)
        elapsed = time.perf_counter() - started
        got = {sop for _, _, sop in scp.received().values()}
        if len(got) != slices:
            raise PeerError(f"{tag}: storescp holds {len(got)} of {slices} instances")
        if len(scp.files()) != slices:     # an instance sent again after a lost response: it counts in the time
            print(f"{tag}: {len(scp.files()) - slices} instance(s) sent twice", file=sys.stderr)
    finally:
        assert scp.process is not None
        stop_process(scp.process)
    return elapsed


def storescu_send(series_dir: Path, scp: StoreSCP) -> None:
    command = [str(STORESCU), "-aet", "BENCHSCU", "-aec", scp.ae_title, "+sd", "+r",
               "127.0.0.1", str(scp.port), str(series_dir)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=600, check=False)
    if result.returncode != 0 or "E: " in result.stdout + result.stderr:
        raise PeerError(f"storescu failed: {(result.stdout + result.stderr)[-2000:]}")


def node_send(files: list[Path], scp: StoreSCP) -> None:
    dest = DestinationSection(name="bench", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
    report = DicomSender(dest, SenderContext(calling_ae="BENCHNODE", timeout_s=TIMEOUT_S)).deliver(
        files, derived_series_uid="bench")
    if not report.ok:
        raise PeerError(f"the node's send failed: {report}")


def run(slices: int, size: int, repeats: int, workdir: Path) -> Result:
    series_dir = workdir / "series"
    files = write_series(make_ct_series(slices=slices, rows=size, cols=size, spacing_mm=1.0, seed=77), series_dir)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    for path in files:                      # into the page cache for both senders alike
        path.read_bytes()
    seconds: dict[str, list[float]] = {"dcmtk storescu": [], "node": []}
    senders = {
        "dcmtk storescu": lambda scp: storescu_send(series_dir, scp),
        "node": lambda scp: node_send(files, scp),
    }
    for repeat in range(repeats):
        order = list(senders) if repeat % 2 == 0 else list(reversed(senders))
        for name in order:
            tag = f"{repeat}-{name.split()[-1]}"
            elapsed = with_storescp(workdir, tag, slices, senders[name])
            seconds[name].append(elapsed)
            print(f"repeat {repeat + 1}: {name}: {elapsed:.2f} s", file=sys.stderr)
    return Result(slices, size, round(megabytes, 1), repeats, seconds)


def report(result: Result) -> str:
    base = result.median("dcmtk storescu")
    load = os.getloadavg()[0]
    lines = [
        f"{result.slices} slices of {result.size}x{result.size} ({result.megabytes:.1f} MB) to dcmtk storescp "
        f"(TCP_NODELAY=1), median of {result.repeats}; {os.cpu_count()} CPUs, load average {load:.1f}, "
        f"Python {platform.python_version()}",
        "",
        "| sender | time (s) | instances/s | MB/s | node / storescu |",
        "|---|---|---|---|---|",
    ]
    for name, runs in result.seconds.items():
        t = result.median(name)
        lines.append(f"| {name} | {t:.2f} ({', '.join(f'{v:.2f}' for v in runs)}) | {result.slices / t:.0f} | "
                     f"{result.megabytes / t:.0f} | {t / base:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=301)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--workdir", type=Path, help="keep files and logs here instead of a temp dir")
    args = parser.parse_args()
    for binary in (STORESCU, STORESCP):
        if not binary.exists():
            parser.error(f"{binary} is not installed (Debian package dcmtk)")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.slices, args.size, args.repeats, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
            result = run(args.slices, args.size, args.repeats, Path(tmp))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
