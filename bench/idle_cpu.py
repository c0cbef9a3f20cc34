"""CPU cost of associations left open and idle on the node's Storage SCP, per polling setting.

    .venv/bin/python bench/idle_cpu.py [--associations 8] [--seconds 5] [--poll-us 20] [--fixed]

Starts the node's StoreSCP in this process (a throwaway spool); a child process opens N associations
to it with pynetdicom and leaves them idle. After 1.5 s (longer than the 0.5 s after which an idle
association slows down) it measures this process's CPU time over `--seconds`, first with no
association open, then with the N idle ones, and reports the difference per association as a
percentage of one core. The peer's polling is in the child, so the figure is the SCP's own. `--fixed`
keeps the fast poll even when idle (the experiment the adaptive scheme replaced). Not a test: figures
go to bench/README.md ("idle"); tests/fault/test_hostile_network.py asserts the bound on the node.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))              # before bench/, whose synth.py would shadow the package

from dicom_node.config import NodeSection  # noqa: E402
from dicom_node.receive import StoreSCP  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402

PEER = """
import sys
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
port, count = int(sys.argv[1]), int(sys.argv[2])
ae = AE(ae_title="IDLE")
ae.add_requested_context(CTImageStorage)
ae.network_timeout = ae.acse_timeout = 600
assocs = [ae.associate("127.0.0.1", port, ae_title="SYNTHNODE") for _ in range(count)]
print("ready" if all(a.is_established for a in assocs) else "refused", flush=True)
sys.stdin.read()                                   # until the parent closes our stdin
for a in assocs:
    a.release()
"""


def cpu_share(seconds: float) -> float:
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--poll-us", type=int, default=20)
    parser.add_argument("--fixed", action="store_true", help="never slow idle associations down")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = NodeSection().updated(port=0, receive_poll_us=args.poll_us, network_timeout_s=600.0)
        scp = StoreSCP(cfg, Spool(Path(tmp)), lambda *_: None)
        if args.fixed:
            scp._polling.idle_s = scp._polling.fast_s
        scp.start()
        try:
            time.sleep(1.0)
            baseline = cpu_share(args.seconds)
            peer = subprocess.Popen([sys.executable, "-c", PEER, str(scp.port), str(args.associations)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert peer.stdout is not None and peer.stdin is not None
                if peer.stdout.readline().strip() != "ready":
                    raise SystemExit("an association was not accepted")
                time.sleep(1.5)
                loaded = cpu_share(args.seconds)
                peer.stdin.close()
                peer.wait(timeout=30)
            finally:
                if peer.poll() is None:
                    peer.kill()
        finally:
            scp.drain(5.0)
    mode = "fixed" if args.fixed else "adaptive"
    per = (loaded - baseline) / args.associations
    print(f"{args.associations} idle associations, {mode} {args.poll_us} us poll: SCP process CPU "
          f"{100 * loaded:.1f}% of a core ({100 * baseline:.1f}% with none open): "
          f"{100 * per:.2f}% per idle association")


if __name__ == "__main__":
    main()
