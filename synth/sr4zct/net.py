"""The SR4ZCT network: a small CNN on through-plane-like planes, residual to their F↑ (B-spline) image.

The network reads the thick rows themselves (a coronal or sagittal plane as acquired, or an axial image
after F↓) and predicts, for each thick row, the `factor` output rows from it to the next one as a
correction added to F↑ (`synth.bspline.interpolate_z`, the BIS baseline). The output grid is exactly
`factor` rows per thick row (factor·(n−1)+1 in all), so this "sub-pixel" layout evaluates the network
on 1/factor of the output pixels: five times cheaper on a CPU than a network run on the F↑ image, the
same residual-to-F↑ output. Its last convolution starts at zero: an untrained network is exactly BIS.

Convolutions are unpadded; a plane is padded once by the receptive radius (edge replicated), the same
in training crops and at inference. Intensities: (hu − HU_MIN) / HU_RANGE, the CTHNet window, unclipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as tf
from torch import nn

from synth.normalize import HU_MIN, HU_RANGE


@dataclass(frozen=True, slots=True)
class NetSpec:
    channels: int = 12
    layers: int = 4           # convolutions, first and last included
    kernel_rows: int = 3
    kernel_cols: int = 3
    factor: int = 5

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 2 or self.factor < 2:
            raise ValueError(f"sr4zct net spec needs channels >= 1, layers >= 2, factor >= 2, got {self}")
        if self.kernel_rows % 2 == 0 or self.kernel_cols % 2 == 0:
            raise ValueError(f"sr4zct net spec needs odd kernels, got {self}")

    @property
    def radius(self) -> tuple[int, int]:
        """Rows and columns of context each side that the unpadded convolutions consume."""
        return self.layers * (self.kernel_rows // 2), self.layers * (self.kernel_cols // 2)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SubPixelCNN(nn.Module):
    """conv → (ReLU → conv)×(layers−1); `factor` output channels = rows between thick rows."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        k = (spec.kernel_rows, spec.kernel_cols)
        mods: list[nn.Module] = [nn.Conv2d(1, spec.channels, k)]
        for _ in range(spec.layers - 2):
            mods += [nn.ReLU(inplace=True), nn.Conv2d(spec.channels, spec.channels, k)]
        last = nn.Conv2d(spec.channels, spec.factor, k)
        nn.init.zeros_(last.weight)
        assert last.bias is not None
        nn.init.zeros_(last.bias)
        mods += [nn.ReLU(inplace=True), last]
        self.body = nn.Sequential(*mods)

    def forward(self, thick_padded: torch.Tensor) -> torch.Tensor:
        """(B, 1, h + 2·rr, w + 2·rc) thick rows in net units → (B, 1, h·factor, w) residual, net units."""
        r: torch.Tensor = self.body(thick_padded)
        b, f, h, w = r.shape
        return r.permute(0, 2, 1, 3).reshape(b, 1, h * f, w)


def pad_planes(thick: torch.Tensor, spec: NetSpec) -> torch.Tensor:
    """(B, 1, h, w) → padded by the receptive radius, edges replicated."""
    rr, rc = spec.radius
    return tf.pad(thick, (rc, rc, rr, rr), mode="replicate")


def to_net(hu: torch.Tensor) -> torch.Tensor:
    return (hu - HU_MIN) / HU_RANGE


HU_PER_UNIT = HU_RANGE
