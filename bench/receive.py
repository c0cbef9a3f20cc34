"""C-STORE receive rate: dcmtk storescu -> the node, pynetdicom's storescp app, dcmtk storescp.

    .venv/bin/python bench/receive.py [--slices 161] [--size 512] [--repeats 3] [--json out.json]
    .venv/bin/python bench/receive.py --busy 2 --receive-only   # 2 busy-loop processes beside; receive only

One run measures all three receivers side by side on the same files: for each repeat a fresh
synthetic series (new UIDs, so the node never de-duplicates) is written once, then sent with
``TCP_NODELAY=1 /usr/bin/storescu`` to each receiver in turn; the time is storescu's wall time
(association to release, every instance acknowledged). For the node it also measures end to end:
from storescu's return (the last instance received) to the whole derived series (5(N-1)+1 files)
in its folder destination, which includes the configured quiet period. The node is idle again
(derived series written) before the other receivers are timed. Medians are reported, with ratios
against pynetdicom's storescp app. With ``--busy N``, N processes that only spin (one per core for a
busy machine) run for the whole measurement, at the same priority as the receivers. Not a test:
figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import functools
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

from dicom_node.config.node import Storage  # noqa: E402
from tests.interop.peers import (  # noqa: E402
    STORESCP,
    STORESCU,
    PeerError,
    RunningNode,
    echo,
    free_port,
    start_node,
    stop_process,
    wait_for,
)
from tests.support.ct_series import make_ct_series, write_series  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
E2E_TIMEOUT_S = 600.0
RECEIVE_ONLY_QUIET_S = 3600.0


@dataclass(frozen=True, slots=True)
class Receiver:
    name: str
    ae_title: str
    port: int
    process: subprocess.Popen[bytes]
    out_dir: Path


@dataclass(frozen=True, slots=True)
class Result:
    slices: int
    size: int
    megabytes: float
    repeats: int
    quiet_period_s: float
    seconds: dict[str, list[float]]
    e2e_s: list[float]
    busy: int = 0
    cpu_s: dict[str, list[float]] | None = None    # each receiver's own CPU seconds per series


    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def send(files_dir: Path, receiver: Receiver) -> float:
    command = [str(STORESCU), "-aet", "BENCHSCU", "-aec", receiver.ae_title, "+sd", "+r",
               "127.0.0.1", str(receiver.port), str(files_dir)]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "E: " in result.stdout + result.stderr:
        raise PeerError(f"storescu to {receiver.name} failed: {(result.stdout + result.stderr)[-2000:]}")
    return elapsed


def start_receiver(name: str, command: list[str], ae_title: str, port: int, out_dir: Path, log: Path) -> Receiver:
    out_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=DCMTK_ENV, cwd=out_dir)
    wait_for(lambda: echo(port, ae_title), 30, f"{name} to answer C-ECHO")
    return Receiver(name, ae_title, port, process, out_dir)


BUSY_LOOP = "import time\nwhile True:\n    sum(range(1000))\n"


def start_busy(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` processes that spin until stopped: other work on the machine."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def reserve_bytes(node: RunningNode) -> int:
    folder = node.storage_dir / "reserve"
    return sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0


def wait_for_reserve(node: RunningNode, timeout_s: float = 120.0) -> int:
    """The node tops its spool reserve up in the background once it is idle (dicom_node/reserve.py): wait
    until it stops growing, so that what is timed is the node as it runs, not its first minute."""
    started = time.monotonic()
    last, steady = -1, 0
    while time.monotonic() - started < timeout_s and (steady < 6 or (last == 0 and time.monotonic() - started < 10)):
        now = reserve_bytes(node)
        steady = steady + 1 if now == last else 0
        last = now
        time.sleep(1.0)
    return last


def derived_done(node: RunningNode, before: frozenset[str], want: int) -> bool:
    """A new series with all ``want`` files is in the node's folder destination."""
    return any(len(files) == want for uid, files in node.outbox_series().items() if uid not in before)


def clear(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            path.unlink()


def run(slices: int, size: int, repeats: int, quiet_period_s: float, workdir: Path, node_settings: list[str],
        busy: int = 0, receive_only: bool = False) -> Result:
    if receive_only:                      # no synthesis in the run at all: nothing completes within it
        quiet_period_s = RECEIVE_ONLY_QUIET_S
    if not any(line.startswith("spool_reserve_mb") for line in node_settings):     # the default, not a test's
        node_settings = [*node_settings, f"spool_reserve_mb = {Storage().spool_reserve_mb}"]
    node = start_node(workdir / "node", quiet_period_s=quiet_period_s, node_settings=node_settings)
    assert node.outbox is not None
    pyn_port, dcm_port = free_port(), free_port()
    pynetdicom_scp = start_receiver(
        "pynetdicom storescp",
        [sys.executable, "-m", "pynetdicom", "storescp", str(pyn_port), "-aet", "PYNSCP", "-od", str(workdir / "pyn")],
        "PYNSCP", pyn_port, workdir / "pyn", workdir / "pynetdicom.log",
    )  # fmt: skip
    dcmtk_scp = start_receiver(
        "dcmtk storescp",
        [str(STORESCP), "-aet", "DCMSCP", "-od", str(workdir / "dcm"), "-fe", ".dcm", str(dcm_port)],
        "DCMSCP", dcm_port, workdir / "dcm", workdir / "dcmtk.log",
    )  # fmt: skip
    node_rx = Receiver("node", node.ae_title, node.port, node.process, node.storage_dir)
    receivers = [node_rx, pynetdicom_scp, dcmtk_scp]
    seconds: dict[str, list[float]] = {r.name: [] for r in receivers}
    cpu: dict[str, list[float]] = {r.name: [] for r in receivers}
    e2e: list[float] = []
    want = 5 * (slices - 1) + 1
    reserved = wait_for_reserve(node)
    print(f"node spool reserve: {reserved / 1e6:.0f} MB", file=sys.stderr)
    spinners = start_busy(busy)
    try:
        warmup = make_ct_series(slices=3, rows=64, cols=64, seed=900)
        write_series(warmup, workdir / "warmup")
        for receiver in receivers:
            send(workdir / "warmup", receiver)
        if not receive_only:
            wait_for(lambda: any(len(f) == 11 for f in node.outbox_series().values()), 60, "warm-up derived series")
        megabytes = 0.0
        for repeat in range(repeats):
            series_dir = workdir / f"series{repeat}"
            paths = write_series(make_ct_series(slices=slices, rows=size, cols=size, seed=1000 + repeat), series_dir)
            megabytes = sum(p.stat().st_size for p in paths) / 1e6
            before = set(node.outbox_series())
            for receiver in receivers[repeat % 3:] + receivers[:repeat % 3]:     # each goes first in turn
                cpu_before = cpu_seconds(receiver.process.pid)
                elapsed = send(series_dir, receiver)
                seconds[receiver.name].append(elapsed)
                cpu[receiver.name].append(round(cpu_seconds(receiver.process.pid) - cpu_before, 2))
                if receiver is node_rx and not receive_only:
                    done = time.perf_counter()
                    wait_for(
                        functools.partial(derived_done, node, frozenset(before), want),
                        E2E_TIMEOUT_S, "the derived series in the folder destination", interval_s=0.02,
                        alive=node.died,
                    )  # fmt: skip
                    e2e.append(time.perf_counter() - done)
                elif receiver is not node_rx:
                    clear(receiver.out_dir)
                print(f"repeat {repeat + 1}: {receiver.name}: {elapsed:.2f} s", file=sys.stderr)
            shutil.rmtree(series_dir)
    finally:
        for process in (*spinners, dcmtk_scp.process, pynetdicom_scp.process, node.process):
            stop_process(process)
    return Result(slices, size, round(megabytes, 1), repeats, quiet_period_s, seconds, e2e, busy, cpu)


def report(result: Result) -> str:
    base = result.median("pynetdicom storescp")
    lines = [
        f"{result.slices} slices of {result.size}x{result.size} ({result.megabytes:.1f} MB), "
        f"dcmtk storescu with TCP_NODELAY=1, median of {result.repeats}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {result.busy} busy-loop process(es) "
        f"beside, Python {platform.python_version()}",
        "",
        "| receiver | storescu time (s) | instances/s | MB/s | vs pynetdicom storescp | receiver CPU-s per series |",
        "|---|---|---|---|---|---|",
    ]
    for name in result.seconds:
        t = result.median(name)
        runs = ", ".join(f"{v:.2f}" for v in result.seconds[name])
        lines.append(f"| {name} | {t:.2f} ({runs}) | {result.slices / t:.0f} | {result.megabytes / t:.0f} | "
                     f"{base / t:.2f}x | {statistics.median((result.cpu_s or {}).get(name) or [float('nan')]):.2f} |")
    if not result.e2e_s:
        return "\n".join([*lines, "", "receive only: no synthesis in this run (quiet period longer than the run)"])
    e2e = statistics.median(result.e2e_s)
    lines += [
        "",
        f"node end to end, last instance received -> {5 * (result.slices - 1) + 1} derived files in the folder "
        f"destination: median {e2e:.2f} s (runs: {', '.join(f'{v:.2f}' for v in result.e2e_s)}), "
        f"of which quiet period {result.quiet_period_s:g} s",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=161)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-period-s", type=float, default=1.0)
    parser.add_argument("--receive-only", action="store_true",
                        help="time receiving only: no synthesis during the run, no end-to-end figure")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run beside (other work)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--workdir", type=Path, help="keep files and logs here instead of a temp dir")
    parser.add_argument(
        "--node-setting",
        action="append",
        default=[],
        metavar="TOML",
        help="an extra line for the node's [node] table, e.g. 'fsync = false' (repeatable)",
    )
    args = parser.parse_args()
    for binary in (STORESCU, STORESCP):
        if not binary.exists():
            parser.error(f"{binary} is not installed (Debian package dcmtk)")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.slices, args.size, args.repeats, args.quiet_period_s, args.workdir, args.node_setting,
                     args.busy, args.receive_only)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp:
            result = run(args.slices, args.size, args.repeats, args.quiet_period_s, Path(tmp), args.node_setting,
                         args.busy, args.receive_only)
    print(report(result))
    if args.node_setting:
        print(f"node settings: {', '.join(args.node_setting)}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
