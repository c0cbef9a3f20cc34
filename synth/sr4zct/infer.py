"""SR4ZCT inference: coronal and sagittal planes through the network, averaged, on the BIS grid.

The output starts as F↑ of the whole volume (`interpolate_z`, the BIS backend's exact result, so the
grid and z positions are the interpolation backend's); each coronal and each sagittal plane adds half
of its network residual. Planes are cropped to the body's bounding box (HU above −500 in any slice,
plus the receptive radius): outside it, air, the output is BIS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from synth.bspline import interpolate_z
from synth.sr4zct.fit import predict_plane
from synth.sr4zct.net import SubPixelCNN
from synth.volume import CTVolume

BODY_HU = -500.0
PLANES_PER_BATCH = 16


def body_box(hu: npt.NDArray[np.float32], margin: int) -> tuple[slice, slice]:
    """(rows, columns) of the in-plane bounding box of tissue, widened by `margin`; all when none."""
    mask = hu.max(axis=0) > BODY_HU
    if not mask.any():
        return slice(0, hu.shape[1]), slice(0, hu.shape[2])
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return (slice(max(0, int(rows[0]) - margin), min(hu.shape[1], int(rows[-1]) + margin + 1)),
            slice(max(0, int(cols[0]) - margin), min(hu.shape[2], int(cols[-1]) + margin + 1)))


def enhance(net: SubPixelCNN, volume: CTVolume, progress: Callable[[int, int], None] | None = None) -> CTVolume:
    """The thin volume: BIS plus the mean of the coronal and sagittal residuals."""
    factor = net.spec.factor
    base = interpolate_z(volume, factor)
    out = base.hu
    hu = volume.hu
    ys, xs = body_box(hu, margin=max(net.spec.radius))
    cor_idx = list(range(ys.start, ys.stop, PLANES_PER_BATCH))
    sag_idx = list(range(xs.start, xs.stop, PLANES_PER_BATCH))
    total, done = len(cor_idx) + len(sag_idx), 0
    for y0 in cor_idx:                                  # coronal planes (z, x) at rows y0…y1
        y1 = min(y0 + PLANES_PER_BATCH, ys.stop)
        planes = hu[:, y0:y1, xs].transpose(1, 0, 2)
        res = predict_plane(net, planes)                # (b, z_out, x)
        out[:, y0:y1, xs] += 0.5 * res.transpose(1, 0, 2)
        done += 1
        if progress is not None:
            progress(done, total)
    for x0 in sag_idx:                                  # sagittal planes (z, y) at columns x0…x1
        x1 = min(x0 + PLANES_PER_BATCH, xs.stop)
        planes = hu[:, ys, x0:x1].transpose(2, 0, 1)
        res = predict_plane(net, planes)                # (b, z_out, y)
        out[:, ys, x0:x1] += 0.5 * res.transpose(1, 2, 0)
        done += 1
        if progress is not None:
            progress(done, total)
    return base
