"""Real 5-mm chest CT for tests: the two lung volumes in the ``pyradiomics==3.0.1`` sdist on PyPI.

The sdist is fetched with pip into a cache outside the repository (``~/.cache/dicom-synth-node/``),
its sha256 is checked, ``data/lung1_image.nrrd`` and ``data/lung2_image.nrrd`` are extracted, and a
volume is converted to a single-frame CT Image Storage series by ``nrrd_to_dicom``. pip needs numpy,
versioneer and wheel just to prepare the sdist's metadata, so the download runs in a throwaway venv
inside the cache. Only an unreachable registry raises ``RegistryUnreachableError`` (tests skip on it);
any other failure, a checksum mismatch above all, is an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tarfile
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.ct_series import ct_dataset, hashed_uid

SDIST_NAME = "pyradiomics-3.0.1.tar.gz"
SDIST_REQUIREMENT = "pyradiomics==3.0.1"
SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
SDIST_SIZE = 34_473_030
VOLUMES = {
    "lung1": "pyradiomics-3.0.1/data/lung1_image.nrrd",
    "lung2": "pyradiomics-3.0.1/data/lung2_image.nrrd",
}
PIP_TIMEOUT_S = 600
NETWORK_ERROR_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
    "ReadTimeoutError",
    "ProxyError",
    "No route to host",
    "Connection refused",
)
UID_NAMESPACE = "dicom-synth-node tests/support/realct"


class RegistryUnreachableError(RuntimeError):
    """pip could not reach the package registry; tests that need real CT skip on this."""


@dataclass(frozen=True, slots=True)
class RealSeries:
    """A converted real CT series on disk, sorted by position (ascending z)."""

    name: str
    paths: tuple[Path, ...]
    series_uid: str
    study_uid: str
    spacing_mm: float
    first_position_mm: tuple[float, float, float]

    @property
    def slices(self) -> int:
        return len(self.paths)


def cache_dir() -> Path:
    return Path.home() / ".cache" / "dicom-synth-node"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_pip(python: Path, *args: str) -> None:
    command = [
        str(python),
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if any(marker in output for marker in NETWORK_ERROR_MARKERS):
        raise RegistryUnreachableError(f"pip {args[0]} could not reach the package registry: {output[-500:]}")
    raise RuntimeError(f"pip {' '.join(args)} failed with exit {result.returncode}: {output[-2000:]}")


def _tool_python(root: Path) -> Path:
    """A throwaway venv with numpy, versioneer and wheel: what the sdist's setup.py needs for metadata."""
    env = root / "pip-venv"
    python = env / "bin" / "python"
    marker = env / ".ready"
    if not marker.exists():
        shutil.rmtree(env, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
        _run_pip(python, "install", "--quiet", "numpy", "versioneer", "wheel", "setuptools")
        marker.touch()
    return python


def fetch_sdist() -> Path:
    """The verified pyradiomics 3.0.1 sdist in the cache, downloading it with pip if needed."""
    root = cache_dir()
    target = root / SDIST_NAME
    with _locked(root / ".sdist.lock"):
        if target.exists() and _sha256(target) == SDIST_SHA256:
            return target
        target.unlink(missing_ok=True)
        download = root / "download"
        shutil.rmtree(download, ignore_errors=True)
        python = _tool_python(root)
        _run_pip(
            python, "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "--dest", str(download), SDIST_REQUIREMENT,
        )  # fmt: skip
        fetched = download / SDIST_NAME
        if not fetched.exists():
            raise RuntimeError(f"pip download left no {SDIST_NAME} in {download}: {sorted(download.iterdir())}")
        actual = _sha256(fetched)
        if actual != SDIST_SHA256:
            fetched.unlink()
            raise RuntimeError(f"{SDIST_NAME}: sha256 {actual}, expected {SDIST_SHA256}")
        fetched.replace(target)
        shutil.rmtree(download, ignore_errors=True)
        return target


def volume_nrrd(name: str) -> Path:
    """Path of ``lung1`` or ``lung2`` NRRD in the cache, extracted from the verified sdist."""
    if name not in VOLUMES:
        raise ValueError(f"name must be one of {sorted(VOLUMES)}, got {name!r}")
    root = cache_dir()
    target = root / "data" / f"{name}_image.nrrd"
    if target.exists():
        return target
    sdist = fetch_sdist()
    with _locked(root / ".extract.lock"):
        if not target.exists():
            with tarfile.open(sdist, "r:gz") as archive:
                member = archive.getmember(VOLUMES[name])
                source = archive.extractfile(member)
                if source is None:
                    raise RuntimeError(f"{VOLUMES[name]} in {sdist} is not a regular file")
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                with source, partial.open("wb") as out:
                    shutil.copyfileobj(source, out)
                partial.replace(target)
    return target


def nrrd_to_dicom(
    nrrd: Path,
    out_dir: Path,
    *,
    patient_id: str,
    series_description: str = "CHEST 5mm",
    uid_salt: str = "",
) -> RealSeries:
    """Write a CT volume (HU, any NRRD SimpleITK reads) as CT Image Storage files ``IM0001.dcm``...

    UIDs are hashed from the file's name, ``patient_id`` and ``uid_salt``: the same call gives the
    same series, a new salt a new one. Stored as uint16, 12 bits, intercept -1024 (HU clipped to
    -1024..3071).
    """
    image: Any = sitk.ReadImage(str(nrrd))  # SimpleITK's methods are untyped
    hu = sitk.GetArrayFromImage(image)  # (z, y, x)
    sx, sy, sz = (float(v) for v in image.GetSpacing())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    row_dir, col_dir = direction[:, 0], direction[:, 1]
    parts = (UID_NAMESPACE, nrrd.name, patient_id, uid_salt)
    study, series, frame = (hashed_uid(*parts, role) for role in ("study", "series", "frame"))
    stored = (np.clip(hu.astype(np.int32), -1024, 3071) + 1024).astype(np.uint16)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(hu.shape[0]):
        position = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k)), dtype=np.float64)
        ds = ct_dataset(
            sop_uid=hashed_uid(*parts, "sop", k),
            study_uid=study,
            series_uid=series,
            frame_uid=frame,
            patient_id=patient_id,
            modality="CT",
            orientation="axial",
            series_description=series_description,
            transfer_syntax=ExplicitVRLittleEndian,
            instance_number=k + 1,
            position=position,
            row_dir=row_dir,
            col_dir=col_dir,
            pixel_spacing=(sy, sx),
            thickness_mm=sz,
            tilt_deg=0.0,
            stored=stored[k],
            bits_stored=12,
            signed=False,
            slope=1.0,
            intercept=-1024.0,
        )
        path = out_dir / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    first = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, 0)), dtype=np.float64)
    return RealSeries(
        name=nrrd.name.split("_")[0],
        paths=tuple(paths),
        series_uid=series,
        study_uid=study,
        spacing_mm=sz,
        first_position_mm=(float(first[0]), float(first[1]), float(first[2])),
    )


def real_ct_series(name: str, out_dir: Path, *, uid_salt: str = "") -> RealSeries:
    """Fetch (cached) and convert ``lung1`` (48 slices) or ``lung2`` (61 slices) into ``out_dir``."""
    return nrrd_to_dicom(volume_nrrd(name), out_dir, patient_id=f"RADIOMICS{name.upper()}", uid_salt=uid_salt)


SHARED_SERIES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lung-pet-ct-dx"


def shared_series(name: str) -> list[Path]:
    """The files of one series in ../shared/data/lung-pet-ct-dx (read in place, never copied into the repo).

    Skips the calling test when the shared folder is absent (a checkout without it).
    """
    import pytest

    folder = SHARED_SERIES / name
    if not folder.is_dir():
        pytest.skip(f"shared real CT series {name} is not at {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


if __name__ == "__main__":  # python -m tests.support.realct lung2 OUTDIR: prefetch and convert
    result = real_ct_series(sys.argv[1], Path(sys.argv[2]))
    print(f"{result.slices} files in {sys.argv[2]}, series {result.series_uid}")
