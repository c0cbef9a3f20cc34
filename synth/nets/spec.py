"""CTHNetSpec: every architectural choice of CTHNet as one frozen, validated value.

The defaults equal the official `config/all.txt` (plus the values the official code hard-codes), so
`CTHNet(CTHNetSpec())` has the official 258-entry state_dict and loads the released weights.
Smaller specs (fewer channels, thinner windows) are for tests and CPU training. The spec is saved
inside every checkpoint, so architecture and weights cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class CTHNetSpec:
    ratio: int = 5                                  # thick/thin spacing ratio
    in_slices: int = 8                              # thick slices per window (c_z)
    tile_size: int = 256                            # trained in-plane size (c_y = c_x)
    crop: int = 3                                   # thin slices dropped at each end of a window
    enc_dim: int = 32                               # 3-D encoder width (T3dE_c)
    enc_layers: int = 1                             # 3-D CTH layers (T3dE_l)
    enc_depth: int = 4                              # Swin-3D blocks per layer (T3dE_d)
    enc_heads: int = 8                              # (T3dE_n)
    enc_window: tuple[int, int, int] = (2, 2, 2)    # (z, y, x) attention window (T3dE_w)
    feat_channels: int = 8                          # channels per thin slice (E_out_c)
    t_fold: int = 8                                 # adjacent rows/columns folded into channels (TD_p)
    t_layers: int = 1                               # through-plane RSTBs (TD_Tl)
    t_depth: int = 4                                # Swin-2D blocks per through-plane RSTB (TD_Td)
    t_window: int = 4                               # (TD_Tw)
    i_layers: int = 2                               # in-plane RSTBs (TD_Il)
    i_depth: int = 4                                # Swin-2D blocks per in-plane RSTB (TD_Id)
    i_window: int = 8                               # (TD_Iw)
    dec_heads: int = 8                              # heads of both decoders (TD_n)
    mlp_ratio: int = 4                              # (T3d_mlp)
    dec_drop_path: float = 0.1                      # stochastic depth of the decoders, training only
    # Not in the official code: add the cubic B-spline interpolation of the window's thick slices to the
    # output, so the network learns only the correction (VDSR-style global residual). Parameter-free: the
    # state_dict keys are the same; the last conv starts at zero, so an untrained model equals BIS.
    global_residual: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "enc_window":
                if not (isinstance(value, tuple) and len(value) == 3
                        and all(type(v) is int and v >= 1 for v in value)):
                    raise ValueError(f"CTHNetSpec.enc_window must be a tuple of three positive ints, got {value!r}")
            elif f.name == "global_residual":
                if type(value) is not bool:
                    raise ValueError(f"CTHNetSpec.global_residual must be a bool, got {value!r}")
            elif f.name == "dec_drop_path":
                if not (isinstance(value, float) and 0.0 <= value < 1.0):
                    raise ValueError(f"CTHNetSpec.dec_drop_path must be a float in [0, 1), got {value!r}")
            elif type(value) is not int or value < (0 if f.name == "crop" else 1):
                rule = "a non-negative int" if f.name == "crop" else "a positive int"
                raise ValueError(f"CTHNetSpec.{f.name} must be {rule}, got {value!r}")
        if self.in_slices < 2 or self.ratio < 2:
            raise ValueError(f"CTHNetSpec needs in_slices >= 2 and ratio >= 2, got {self.in_slices} and "
                             f"{self.ratio}")
        for axis, size, window in zip("zyx", (self.in_slices, self.tile_size, self.tile_size),
                                      self.enc_window, strict=True):
            if size % window or size <= window:
                raise ValueError(f"CTHNetSpec.enc_window {self.enc_window}: the {axis} window {window} must "
                                 f"divide and be smaller than the window size {size}")
        self._check_divisible("enc_dim", self.enc_dim, "enc_heads", self.enc_heads)
        self._check_divisible("t_dim (feat_channels*t_fold)", self.t_dim, "dec_heads", self.dec_heads)
        self._check_divisible("i_dim (feat_channels*window_slices)", self.i_dim, "dec_heads", self.dec_heads)
        self._check_divisible("tile_size", self.tile_size, "t_fold", self.t_fold)
        self._check_divisible("tile_size", self.tile_size, "t_window", self.t_window)
        self._check_divisible("tile_size", self.tile_size, "i_window", self.i_window)
        self._check_divisible("window_slices (ratio*(in_slices-1)+1)", self.window_slices,
                              "t_window", self.t_window)
        if self.tile_size <= max(self.i_window, self.t_window) or self.window_slices <= self.t_window:
            raise ValueError(f"CTHNetSpec: windows (i_window {self.i_window}, t_window {self.t_window}) must be "
                             f"smaller than tile_size {self.tile_size} and window_slices {self.window_slices}")
        if self.feat_channels % 2:
            raise ValueError(f"CTHNetSpec.feat_channels must be even (sin/cos pairs), got {self.feat_channels}")
        if 2 * self.crop + self.ratio > self.window_slices:
            raise ValueError(f"CTHNetSpec.crop {self.crop} leaves fewer than ratio={self.ratio} of the "
                             f"{self.window_slices} window slices")

    @staticmethod
    def _check_divisible(name: str, value: int, by_name: str, by: int) -> None:
        if value % by:
            raise ValueError(f"CTHNetSpec: {name}={value} must be divisible by {by_name}={by}")

    @property
    def window_step(self) -> int:
        """In-plane sizes (tiles, crops) must be multiples of this: every attention window grid fits."""
        return math.lcm(self.t_fold, self.t_window, self.i_window, self.enc_window[1], self.enc_window[2])

    @property
    def window_slices(self) -> int:
        """Thin slices the network makes for one window: ratio·(in_slices−1)+1 (36)."""
        return self.ratio * (self.in_slices - 1) + 1

    @property
    def out_slices(self) -> int:
        """Thin slices the network returns: the central window_slices − 2·crop (30)."""
        return self.window_slices - 2 * self.crop

    @property
    def t_dim(self) -> int:
        return self.feat_channels * self.t_fold

    @property
    def i_dim(self) -> int:
        return self.feat_channels * self.window_slices

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (ints, floats, lists), loadable with torch.load(weights_only=True)."""
        out = asdict(self)
        out["enc_window"] = list(self.enc_window)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CTHNetSpec:
        if not isinstance(raw, dict):
            raise TypeError(f"CTHNetSpec.from_dict needs a dict, got {type(raw).__name__}")
        names = {f.name for f in fields(cls)}
        if unknown := raw.keys() - names:
            raise ValueError(f"CTHNetSpec: unknown field(s) {sorted(unknown)}")
        values = dict(raw)
        if isinstance(values.get("enc_window"), list):
            values["enc_window"] = tuple(values["enc_window"])
        return cls(**values)
