"""`python -m synth infer`: NIfTI and DICOM-folder input, geometry kept, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from synth.checkpoint import CheckpointMetadata, save_checkpoint
from synth.cli import main
from synth.nets import CTHNet
from tests.support.tiny_cthnet import TINY

DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)   # a coronal-ish, non-identity direction


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(path, CTHNet(TINY), CheckpointMetadata(training_data="unit test"))
    return path


def thick_image(n: int = 4, rows: int = 40, cols: int = 36, spacing_z: float = 5.0) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1500, (n, rows, cols)).astype(np.int16))
    image.SetSpacing((0.7, 0.8, spacing_z))
    image.SetOrigin((-120.0, 30.5, 400.0))
    image.SetDirection(DIRECTION)
    return image


def test_nifti_in_nifti_out_with_geometry(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "thick.nii.gz", tmp_path / "out" / "thin.nii.gz"
    sitk.WriteImage(thick_image(), str(src))
    assert main(["infer", str(src), str(dst), "--weights", str(weights), "--device", "cpu"]) == 0
    out = sitk.ReadImage(str(dst))
    assert out.GetSize() == (36, 40, 16)
    np.testing.assert_allclose(out.GetSpacing(), (0.7, 0.8, 1.0), rtol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), (-120.0, 30.5, 400.0), rtol=1e-6)
    np.testing.assert_allclose(out.GetDirection(), DIRECTION, atol=1e-6)
    assert out.GetPixelID() == sitk.sitkInt16
    captured = capsys.readouterr()
    assert "4 slices at 5 mm -> 16 at 1 mm" in captured.out
    assert "window" in captured.err                                      # the progress bar


def test_dicom_folder_input(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    image = thick_image(n=3, spacing_z=4.5)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(image.GetSize()[2]):
        sl = image[:, :, i]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0013", str(i + 1)), ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{i + 1}"),
                           ("0020|0032", "\\".join(f"{v:g}" for v in image.TransformIndexToPhysicalPoint((0, 0, i))))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{i:03d}.dcm"))
        writer.Execute(sl)
    dst = tmp_path / "thin.nii"
    assert main(["infer", str(folder), str(dst), "--weights", str(weights), "--device", "cpu", "--quiet",
                 "--dtype", "float32", "--chunk-tokens", "512"]) == 0
    out = sitk.ReadImage(str(dst))
    assert out.GetSize() == (36, 40, 11)
    np.testing.assert_allclose(out.GetSpacing(), (0.7, 0.8, 0.9), rtol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), (-120.0, 30.5, 400.0), rtol=1e-5)


def test_unit_intensity_round_trip(tmp_path: Path, weights: Path) -> None:
    src, dst = tmp_path / "thick.nrrd", tmp_path / "thin.mha"
    unit = sitk.GetImageFromArray(np.full((2, 32, 32), 0.4, np.float32))
    unit.SetSpacing((0.7, 0.7, 5.0))
    sitk.WriteImage(unit, str(src))
    assert main(["infer", str(src), str(dst), "--weights", str(weights), "--device", "cpu", "--quiet",
                 "--intensity", "unit", "--dtype", "float32"]) == 0
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(dst)))
    assert values.shape == (6, 32, 32) and values.min() >= 0.0 and values.max() <= 1.0


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda d: d / "missing.nii.gz", [], r"input .*missing\.nii\.gz does not exist"),
        (lambda d: (d / "bad.nii.gz").write_bytes(b"junk") and d / "bad.nii.gz", [], r"cannot read .*bad\.nii\.gz"),
        (lambda d: (d / "empty").mkdir() or d / "empty", [], r"input folder .*empty holds no DICOM series"),
        (lambda d: d / "ok.nii.gz", ["--max-spacing-mm", "4.5"], r"input slice spacing 5 mm is outside 4-4\.5 mm"),
        (lambda d: d / "ok.nii.gz", ["--device", "tpu"], r"synth.device must be auto, cpu, cuda or cuda:N"),
        (lambda d: d / "ok.nii.gz", ["--intensity", "unit"], r"--dtype int16 cannot hold \[0, 1\] values"),
        (lambda d: d / "one.nii.gz", [], r"has 1 slice\(s\); synthesis needs at least 2"),
        (lambda d: d / "ok.nii.gz", ["--threads", "0"], r"--threads must be at least 1, got 0"),
    ],
)
def test_clear_errors(tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str], make: object,
                      extra: list[str], message: str) -> None:
    sitk.WriteImage(thick_image(n=2, rows=32, cols=32), str(tmp_path / "ok.nii.gz"))
    sitk.WriteImage(thick_image(n=1), str(tmp_path / "one.nii.gz"))
    src = make(tmp_path)  # type: ignore[operator]
    rc = main(["infer", str(src), str(tmp_path / "o.nii.gz"), "--weights", str(weights), "--device", "cpu",
               "--quiet", *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("synth infer: error: ")
    assert re.search(message, err), err


def test_bad_weights_and_output_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ok.nii.gz"
    sitk.WriteImage(thick_image(n=2, rows=32, cols=32), str(src))
    assert main(["infer", str(src), str(tmp_path / "o.nii.gz"), "--weights", str(tmp_path / "none.pt")]) == 2
    assert "weights " in capsys.readouterr().err
    assert main(["infer", str(src), str(tmp_path / "o.png"), "--weights", "w.pt"]) == 2
    assert "output must end in one of .nii, .nii.gz, .nrrd, .mha, got 'o.png'" in capsys.readouterr().err
