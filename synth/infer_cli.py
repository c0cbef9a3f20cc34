"""`python -m synth infer INPUT OUTPUT [--backend B] [--weights W] [--budget-s N]`: thick in, thin out.

Backends: `cthnet` (default; without --weights the shipped phantom-trained demonstration weights, not
for clinical use, synth/weights/MODEL_CARD.md), `sr4zct` (self-supervised, fine-tuned on the input's
own axial images for up to --budget-s seconds; synth/weights/MODEL_CARD-sr4zct.md) or `interpolation`
(the BIS baseline). The command says which, and sr4zct prints its off-axis validation.

INPUT is a NIfTI/NRRD/MHA file or a folder holding one DICOM series (read with SimpleITK). The
output keeps the input's origin and direction; its slice spacing is the input's divided by 5, and
thin slice 0 lies on thick slice 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import SimpleITK as sitk

    from synth.seam import Synthesizer
    from synth.volume import CTVolume

OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


class InputError(ValueError):
    """The input cannot be read as one 3-D CT volume."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="thick-slice volume: NIfTI/NRRD/MHA file or DICOM series folder")
    parser.add_argument("output", type=Path, help="thin-slice output (.nii.gz, .nii, .nrrd or .mha)")
    parser.add_argument("--backend", default="cthnet", choices=("cthnet", "sr4zct", "interpolation"),
                        help="cthnet (default), sr4zct (self-supervised per series) or interpolation (BIS)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="sr4zct: fine-tuning wall clock in seconds (default: synth.sr4zct.budget_s; 0: "
                             "the shipped pretrained network as is)")
    parser.add_argument("--thickness-mm", type=float, default=0.0,
                        help="slice thickness when it differs from the spacing (default: DICOM SliceThickness, "
                             "else the spacing)")
    parser.add_argument("--weights", default="",
                        help="our checkpoint (.pt) or the official CTHNet .pkl (default: the shipped "
                             "phantom-trained demonstration weights, not for clinical use)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16/fp16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per batch on CUDA (CPU uses 1)")
    parser.add_argument("--series", default=None, help="SeriesInstanceUID to read when a folder holds several")
    parser.add_argument("--min-spacing-mm", type=float, default=0.0,
                        help="smallest slice spacing accepted (default: the backend's, 4 mm for cthnet)")
    parser.add_argument("--max-spacing-mm", type=float, default=0.0,
                        help="largest slice spacing accepted (default: the backend's, 6 mm for cthnet)")
    parser.add_argument("--intensity", default="hu", choices=("hu", "unit"),
                        help="input values: HU, or already windowed to [0, 1] (as in RPLHR-CT); output alike")
    parser.add_argument("--dtype", default="int16", choices=("int16", "float32"),
                        help="output voxel type (int16 is rounded HU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="run Swin blocks in place on chunks of this many tokens (default: 4096 on CPU, "
                             "whole tensors on CUDA; see bench/README.md)")
    parser.add_argument("--cpu-workers", type=int, default=None,
                        help="CPU: windows computed at once, one thread each (default: torch's thread count, "
                             "at most one per usable core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from synth.normalize import HU_MIN, HU_RANGE
    from synth.seam import SynthesisRefusedError
    from synth.volume import CTVolume

    output: Path = args.output
    if not output.name.endswith(OUTPUT_SUFFIXES):
        return _fail(f"output must end in one of {', '.join(OUTPUT_SUFFIXES)}, got {output.name!r}")
    if not (args.thickness_mm >= 0):
        return _fail(f"--thickness-mm must be >= 0, got {args.thickness_mm}")
    try:
        image = read_image(args.input, args.series)
        synthesizer = _build(args)
    except ValueError as exc:            # InputError, CheckpointError, BackendLoadError, bad options
        return _fail(str(exc))

    sx, sy, sz = image.GetSpacing()
    values = sitk.GetArrayFromImage(image).astype(np.float32)          # (z, y, x)
    if args.intensity == "unit":
        values = values * np.float32(HU_RANGE) + np.float32(HU_MIN)
    thickness = args.thickness_mm or slice_thickness_mm(args.input)
    volume = CTVolume(values, (float(sz), float(sy), float(sx)), slice_thickness_mm=float(thickness))
    try:
        thin = _synthesize(synthesizer, volume, quiet=args.quiet, unit="window" if args.backend == "cthnet" else "step")
    except SynthesisRefusedError as exc:
        return _fail(str(exc))
    result = thin.hu
    if args.intensity == "unit":
        result = (result - np.float32(HU_MIN)) / np.float32(HU_RANGE)
        if args.dtype == "int16":
            return _fail("--dtype int16 cannot hold [0, 1] values; use --dtype float32 with --intensity unit")
    data = np.rint(result).astype(np.int16) if args.dtype == "int16" else result.astype(np.float32)
    out = sitk.GetImageFromArray(data)
    out.SetSpacing((sx, sy, thin.spacing_mm[0]))
    out.SetOrigin(image.GetOrigin())                                    # thin slice 0 = thick slice 0
    out.SetDirection(image.GetDirection())
    output.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(out, str(output), useCompression=output.name.endswith(".gz"))
    identity = synthesizer.identity
    weights = f", weights sha256 {identity.weights_sha256[:12]}" if identity.weights_sha256 else ""
    print(f"{args.input} -> {output}: {volume.shape[0]} slices at {sz:g} mm -> {thin.shape[0]} at "
          f"{thin.spacing_mm[0]:g} mm ({identity.backend}{weights})")
    if thin.figures:
        print("figures: " + ", ".join(f"{k} {v:.2f}" for k, v in thin.figures.items()))
    if identity.caution:
        print(identity.caution)
    return 0


def _build(args: argparse.Namespace) -> Synthesizer:
    from synth.backends import build_synthesizer
    from synth.config import SR4ZCTConfig, SynthConfig

    budget = SR4ZCTConfig().budget_s if args.budget_s is None else args.budget_s
    sr4 = SR4ZCTConfig(budget_s=budget, weights=args.weights if args.backend == "sr4zct" else "")
    cfg = SynthConfig(backend=args.backend, weights=args.weights if args.backend == "cthnet" else "",
                      device=args.device, batch_size=args.batch_size, min_input_spacing_mm=args.min_spacing_mm,
                      max_input_spacing_mm=args.max_spacing_mm, sr4zct=sr4)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)                            # this process is ours alone
    if args.backend != "cthnet":
        return build_synthesizer(cfg)
    from synth.engine import CTHNetSynthesizer

    return CTHNetSynthesizer.from_config(cfg, precision=args.precision, chunk_tokens=args.chunk_tokens,
                                         cpu_workers=args.cpu_workers)


def _synthesize(synthesizer: Synthesizer, volume: CTVolume, *, quiet: bool, unit: str) -> CTVolume:
    from tqdm import tqdm

    bar = tqdm(unit=unit, disable=quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return synthesizer(volume, progress=progress)
    finally:
        bar.close()


def slice_thickness_mm(path: Path) -> float:
    """DICOM SliceThickness (0018,0050) of a series folder's first file; 0.0 (unknown) otherwise."""
    import math

    import SimpleITK as sitk

    if not path.is_dir():
        return 0.0
    files = sorted(p for p in path.iterdir() if p.is_file())
    reader = sitk.ImageFileReader()
    try:
        reader.SetFileName(str(files[0]))
        reader.ReadImageInformation()
        value = float(reader.GetMetaData("0018|0050").strip()) if reader.HasMetaDataKey("0018|0050") else 0.0
    except (IndexError, RuntimeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def read_image(path: Path, series_uid: str | None = None) -> sitk.Image:
    """A 3-D SimpleITK image from a file or a DICOM series folder; InputError with a reason otherwise."""
    import SimpleITK as sitk

    if not path.exists():
        raise InputError(f"input {path} does not exist")
    try:
        if path.is_dir():
            ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
            if not ids:
                raise InputError(f"input folder {path} holds no DICOM series")
            if series_uid is None and len(ids) > 1:
                raise InputError(f"input folder {path} holds {len(ids)} DICOM series; choose one with --series")
            chosen = series_uid or ids[0]
            if chosen not in ids:
                raise InputError(f"series {chosen} is not in {path}")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), chosen))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {path}: {first}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"input {path} must be a 3-D single-channel volume, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    if image.GetSize()[2] < 2:
        raise InputError(f"input {path} has {image.GetSize()[2]} slice(s); synthesis needs at least 2")
    return cast("sitk.Image", image)


def _fail(message: str) -> int:
    print(f"synth infer: error: {message}", file=sys.stderr)
    return 2
