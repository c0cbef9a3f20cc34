"""CPU cost of associations left open and idle on the node's Storage SCP, per polling setting.

    .venv/bin/python bench/idle_cpu.py [--associations 4] [--seconds 4] [--poll-us 20]

Starts the node's StoreSCP in this process (a throwaway spool), opens N associations to it from a
pynetdicom SCU in the same process, waits 1 s (longer than the 0.5 s after which an idle association
goes back to pynetdicom's 1 ms pace), then reports the process CPU time over `--seconds` as a percentage
of one core. Both ends run here, so pynetdicom's own polling on the SCU side is in every figure;
compare settings, not absolute values. `--fixed` keeps the fast poll even when idle (the experiment the
adaptive scheme replaced). Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))              # before bench/, whose synth.py would shadow the package

from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from dicom_node.config import NodeSection  # noqa: E402
from dicom_node.receive import StoreSCP  # noqa: E402
from dicom_node.spool import Spool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--poll-us", type=int, default=20)
    parser.add_argument("--fixed", action="store_true", help="never slow idle associations down")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scp = StoreSCP(NodeSection(port=0, receive_poll_us=args.poll_us), Spool(Path(tmp)), lambda *_: None)
        if args.fixed:
            scp._polling.idle_s = scp._polling.fast_s
        scp.start()
        ae = AE(ae_title="IDLE")
        ae.add_requested_context(CTImageStorage)
        assocs = [ae.associate("127.0.0.1", scp.port, ae_title="SYNTHNODE") for _ in range(args.associations)]
        try:
            if not all(a.is_established for a in assocs):
                raise SystemExit("an association was not accepted")
            time.sleep(1.0)
            cpu0, wall0 = time.process_time(), time.monotonic()
            time.sleep(args.seconds)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        finally:
            for a in assocs:
                a.release()
            scp.drain(5.0)
    mode = "fixed" if args.fixed else "adaptive"
    print(f"{args.associations} idle associations, {mode} {args.poll_us} us poll: "
          f"process CPU {100 * cpu:.0f}% of a core")


if __name__ == "__main__":
    main()
