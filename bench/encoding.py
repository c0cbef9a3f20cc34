"""Bytes and send time per output transfer syntax, as ratios against explicit-le measured in the same run.

    nice -n 10 .venv/bin/python bench/encoding.py [--slices 61] [--repeats 3] [--json out.json]

Instances: the real 5-mm chest CT lung2 (pyradiomics, 61 x 512², tests/support/realct.py) written as
the node writes its output (signed 16-bit HU, Explicit VR Little Endian, one file per slice). For
each syntax, interleaved over `--repeats` rounds so that machine load hits all alike (median shown):

- bytes: the encoded instances, summed;
- encode: wall time to encode them all (pydicom's encoders plus the node's decode-back check);
- C-STORE: send_dicom to dcmtk storescp (+xa, TCP_NODELAY=1) on loopback, encoding included;
- STOW-RS: DicomwebSender.deliver to Orthanc with orthanc-dicomweb on loopback, 50 per request.

Not a test: figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))              # before bench/, whose synth.py would shadow the package

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from dicom_node.config import TRANSFER_SYNTAXES, DestinationSection, DicomwebDestinationSection  # noqa: E402
from dicom_node.encoding import encoded_bytes  # noqa: E402
from dicom_node.senders import SenderContext, SendReport  # noqa: E402
from dicom_node.senders.dicomweb import DicomwebSender  # noqa: E402
from dicom_node.senders.dimse import send_dicom  # noqa: E402
from tests.interop.orthanc_web import running_orthanc_web  # noqa: E402
from tests.interop.peers import start_storescp, stop_process  # noqa: E402
from tests.support.realct import real_ct_series  # noqa: E402

TIMEOUT_S = 60.0


def derived_like(source: Path, out: Path, slices: int) -> list[Path]:
    """The real series as the node writes its output: HU as signed 16-bit, named <SOPInstanceUID>.dcm."""
    out.mkdir(parents=True)
    paths = []
    for path in sorted(source.glob("*.dcm"))[:slices]:
        ds = pydicom.dcmread(path)
        hu = np.round(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = hu.tobytes()
        target = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=61)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        real = real_ct_series("lung2", tmp / "lung2")
        files = derived_like(tmp / "lung2", tmp / "derived", args.slices)
        print(f"{len(files)} instances of {real.slices} from lung2, {sum(p.stat().st_size for p in files)} bytes")
        scp = start_storescp(tmp / "storescp", tmp, "BENCHSCP")
        results: dict[str, dict[str, list[float]]] = {s: {"bytes": [], "encode_s": [], "cstore_s": [], "stow_s": []}
                                                      for s in TRANSFER_SYNTAXES}
        try:
            with running_orthanc_web(tmp / "orthanc") as orthanc:
                for _ in range(args.repeats):
                    for syntax in TRANSFER_SYNTAXES:
                        row = results[syntax]
                        sizes: list[int] = []
                        row["encode_s"].append(timed(lambda s=syntax, out=sizes: out.extend(  # type: ignore[misc]
                            len(encoded_bytes(p, s)) for p in files)))
                        row["bytes"].append(float(sum(sizes)))
                        dest = DestinationSection("scp", "BENCHSCP", "127.0.0.1", scp.port, transfer_syntax=syntax)
                        report = None

                        def cstore(d: DestinationSection = dest) -> None:
                            nonlocal report
                            report = send_dicom(files, d, "BENCHNODE", TIMEOUT_S)

                        row["cstore_s"].append(timed(cstore))
                        assert report is not None and report.ok, report
                        web = DicomwebDestinationSection("web", orthanc.dicomweb_url, transfer_syntax=syntax)
                        sender = DicomwebSender(web, SenderContext("BENCHNODE", TIMEOUT_S))
                        outcome: list[SendReport] = []
                        row["stow_s"].append(timed(lambda s=sender, out=outcome: out.append(  # type: ignore[misc]
                            s.deliver(files, derived_series_uid="bench"))))
                        assert outcome[0].ok, outcome[0]
        finally:
            if scp.process is not None:
                stop_process(scp.process)
    medians = {s: {k: statistics.median(v) for k, v in row.items()} for s, row in results.items()}
    base = medians["explicit-le"]
    print("\n| transfer_syntax | MB | vs explicit-le | encode s | C-STORE s | vs | STOW-RS s | vs |")
    print("|---|---|---|---|---|---|---|---|")
    for syntax, m in medians.items():
        print(f"| {syntax} | {m['bytes'] / 1e6:.1f} | {m['bytes'] / base['bytes']:.2f} | {m['encode_s']:.2f} | "
              f"{m['cstore_s']:.2f} | {m['cstore_s'] / base['cstore_s']:.2f} | {m['stow_s']:.2f} | "
              f"{m['stow_s'] / base['stow_s']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"instances": len(files), "repeats": args.repeats, "runs": results,
                                         "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
