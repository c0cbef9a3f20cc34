"""CTHNet: the official schema (names, shapes, count), shapes through the net, spec validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from synth.nets import CTHNet, CTHNetSpec
from synth.nets.blocks import SwinBlock, relative_position_index, run_blocks, window_partition, window_reverse
from synth.nets.cthnet import legacy_nearest_index, sinusoid_positions
from tests.support.tiny_cthnet import TINY


def official_schema() -> dict[str, tuple[int, ...]]:
    """The 258-entry state_dict of the official CTHNet, written out from spec §1.8."""
    s: dict[str, tuple[int, ...]] = {}

    def ln(prefix: str, dim: int) -> None:
        s[f"{prefix}.weight"] = (dim,)
        s[f"{prefix}.bias"] = (dim,)

    def lin(prefix: str, out: int, inp: int) -> None:
        s[f"{prefix}.weight"] = (out, inp)
        s[f"{prefix}.bias"] = (out,)

    def block(prefix: str, dim: int, table: int, n: int) -> None:
        ln(f"{prefix}.norm1", dim)
        s[f"{prefix}.attn.relative_position_bias_table"] = (table, 8)
        s[f"{prefix}.attn.relative_position_index"] = (n, n)
        lin(f"{prefix}.attn.qkv", 3 * dim, dim)
        lin(f"{prefix}.attn.proj", dim, dim)
        ln(f"{prefix}.norm2", dim)
        lin(f"{prefix}.mlp.fc1", 4 * dim, dim)
        lin(f"{prefix}.mlp.fc2", dim, 4 * dim)

    s["Encoder.conv_first.weight"], s["Encoder.conv_first.bias"] = (32, 1, 3, 7, 7), (32,)
    ln("Encoder.norm_first", 32)
    ln("Encoder.norm_last", 32)
    for i in range(4):
        block(f"Encoder.layers.0.blocks.{i}", 32, 27, 8)
    s["Encoder.layers.0.layer_conv.weight"], s["Encoder.layers.0.layer_conv.bias"] = (32, 32, 3, 3, 3), (32,)
    ln("Encoder.layers.0.layer_norm", 32)
    s["Encoder.conv_after_body.weight"], s["Encoder.conv_after_body.bias"] = (32, 32, 3, 3, 3), (32,)
    s["conv_after_E.weight"], s["conv_after_E.bias"] = (8, 32, 3, 3, 3), (8,)
    for name, dim, table, n, layers in (("Decoder_T1", 64, 49, 16, 1), ("Decoder_I1", 288, 225, 64, 2)):
        ln(f"{name}.patch_embed.norm", dim)
        ln(f"{name}.norm", dim)
        for k in range(layers):
            for i in range(4):
                block(f"{name}.layers.{k}.residual_group.blocks.{i}", dim, table, n)
            s[f"{name}.layers.{k}.conv.weight"], s[f"{name}.layers.{k}.conv.bias"] = (dim, dim, 3, 3), (dim,)
    s["conv_after_body.weight"], s["conv_after_body.bias"] = (288, 288, 3, 3), (288,)
    s["conv_before_upsample.0.weight"], s["conv_before_upsample.0.bias"] = (16, 8, 1, 1, 1), (16,)
    s["conv_last.weight"], s["conv_last.bias"] = (1, 16, 1, 1, 1), (1,)
    return s


def test_default_spec_matches_the_official_schema() -> None:
    model = CTHNet(CTHNetSpec())
    state = model.state_dict()
    expected = official_schema()
    assert len(expected) == 258
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 10_606_217
    assert sum(1 for k in state if k.endswith("relative_position_index")) == 16
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("Encoder", "conv_after_E", "Decoder_T1", "Decoder_I1", "conv_after_body")}
    assert parts == {"Encoder": 111_968, "conv_after_E": 6_920, "Decoder_T1": 238_688,
                     "Decoder_I1": 9_501_696, "conv_after_body": 746_784}
    fresh = CTHNet()
    fresh.load_state_dict(state, strict=True)


def test_default_spec_derived_sizes() -> None:
    spec = CTHNetSpec()
    assert (spec.window_slices, spec.out_slices, spec.t_dim, spec.i_dim) == (36, 30, 64, 288)


def test_default_spec_forward_shape_on_a_small_plane() -> None:
    # The full default architecture, on a 32×32 plane (any multiple of 8 works) to stay fast on CPU.
    model = CTHNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 1, 8, 32, 32))
        full = model.forward_window(torch.rand(1, 1, 8, 32, 32))
    assert out.shape == (1, 1, 30, 32, 32)
    assert full.shape == (1, 1, 36, 32, 32)


def test_tiny_spec_shapes_and_batch_independence() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY).eval()
    x = torch.rand(3, 1, 4, 32, 32)
    with torch.inference_mode():
        out = model(x)
        single = model(x[1:2])
    assert out.shape == (3, 1, TINY.out_slices, 32, 32) == (3, 1, 10, 32, 32)
    torch.testing.assert_close(out[1:2], single, rtol=1e-4, atol=1e-5)


def test_tiny_spec_trains_one_step() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY).train()
    loss = model(torch.rand(1, 1, 4, 32, 32)).abs().mean()
    loss.backward()
    without = [name for name, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or float(p.grad.abs().sum()) == 0.0]
    assert without == [], "parameters the loss does not reach (or reaches with NaN/inf)"


def test_model_rejects_a_wrong_input_shape() -> None:
    model = CTHNet(TINY)
    with pytest.raises(ValueError, match=r"CTHNet input must be \(B, 1, 4, Y, X\) with Y and X multiples of 4"):
        model(torch.rand(1, 1, 5, 32, 32))
    with pytest.raises(TypeError, match="CTHNet needs a CTHNetSpec, got dict"):
        CTHNet({"ratio": 5})  # type: ignore[arg-type]


def test_legacy_nearest_matches_torch_interpolate() -> None:
    src = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1)
    ref = F.interpolate(src, size=(36, 1, 1), mode="nearest").flatten().long()
    assert torch.equal(legacy_nearest_index(8, 36), ref)
    assert legacy_nearest_index(8, 36)[[0, 4, 5, 8, 9, 13, 35]].tolist() == [0, 0, 1, 1, 2, 2, 7]


def test_positions_are_the_fixed_sinusoids() -> None:
    pe = sinusoid_positions(8, 36)
    assert pe.shape == (1, 8, 36, 1, 1)
    d, i = 7, 1
    angle = d * 10000 ** (-2 * i / 8)
    assert float(pe[0, 2 * i, d]) == pytest.approx(math.sin(angle), abs=1e-6)
    assert float(pe[0, 2 * i + 1, d]) == pytest.approx(math.cos(angle), abs=1e-6)
    assert "positions_z" not in CTHNet(TINY).state_dict()


def test_relative_position_index_is_standard_swin() -> None:
    idx2 = relative_position_index((2, 2))
    assert idx2.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    idx3 = relative_position_index((2, 2, 2))
    assert idx3.shape == (8, 8) and int(idx3.max()) == 26 and int(idx3[0, 0]) == 13


def test_window_partition_round_trip_and_order() -> None:
    x = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).view(2, 4, 6, 3)
    windows = window_partition(x, (2, 3))
    assert windows.shape == (2 * 2 * 2, 6, 3)
    assert torch.equal(windows[0, :, 0], x[0, :2, :3, 0].flatten())     # raster order inside a window
    assert torch.equal(window_reverse(windows, (2, 3), (4, 6)), x)


def test_through_plane_reshape_follows_the_official_order() -> None:
    # Tag U's channel-major flat index f = c·Zo + d and check what the sagittal slab sees (spec §1.6).
    spec = CTHNetSpec(tile_size=16, t_window=4, i_window=4, enc_window=(2, 2, 2))
    b, c, zo, h, w, p = 1, 8, 36, 16, 16, 8
    u = torch.arange(c * zo, dtype=torch.float32).view(1, c, zo, 1, 1).expand(b, c, zo, h, w)
    g = u.reshape(b, zo, c, h, w)
    assert g[0, 0, :, 0, 0].tolist() == list(range(8))                  # pseudo-slice 0 = (c=0, d=0..7)
    assert g[0, :6, 0, 0, 0].tolist() == [0, 8, 16, 24, 32, 40]          # (0,0),(0,8),…,(1,4)
    seen: list[torch.Tensor] = []

    model = CTHNet(spec)

    def capture(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].clone())

    model.Decoder_T1.register_forward_pre_hook(capture)
    model._through_plane(g)
    sag, cor = seen
    assert sag.shape == (w // p, c * p, zo, h) and cor.shape == (h // p, c * p, zo, w)
    # channel (k, wp) of slab wn at (n, h) is G[n, k, h, wn·p + wp]
    assert sag[1, 3 * p + 5, 2, 7].item() == g[0, 2, 3, 7, 1 * p + 5].item()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"enc_dim": 30}, r"enc_dim=30 must be divisible by enc_heads=8"),
        ({"tile_size": 250}, r"tile_size=250 must be divisible by t_fold=8"),
        ({"t_window": 5}, r"tile_size=256 must be divisible by t_window=5"),
        ({"enc_window": (3, 2, 2)}, r"the z window 3 must divide and be smaller than the window size 8"),
        ({"enc_window": (2, 2)}, r"enc_window must be a tuple of three positive ints"),
        ({"ratio": 0}, r"CTHNetSpec.ratio must be a positive int, got 0"),
        ({"crop": -1}, r"CTHNetSpec.crop must be a non-negative int, got -1"),
        ({"crop": 16}, r"crop 16 leaves fewer than ratio=5 of the 36 window slices"),
        ({"feat_channels": 3, "t_fold": 8, "dec_heads": 1}, r"feat_channels must be even"),
        ({"dec_drop_path": 1}, r"dec_drop_path must be a float in \[0, 1\), got 1"),
        ({"in_slices": 1}, r"CTHNetSpec needs in_slices >= 2 and ratio >= 2, got 1 and 5"),
        ({"in_slices": 9}, r"the z window 2 must divide and be smaller than the window size 9"),
        ({"mlp_ratio": 2.0}, r"CTHNetSpec.mlp_ratio must be a positive int, got 2.0"),
        ({"global_residual": 1}, r"CTHNetSpec.global_residual must be a bool, got 1"),
        ({"i_window": 256, "t_fold": 8}, r"tile_size=256 must be divisible by i_window=256|must be smaller than"),
    ],
)
def test_invalid_specs_fail_at_construction(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CTHNetSpec(**changes)  # type: ignore[arg-type]


def test_spec_dict_round_trip_and_unknown_field() -> None:
    assert CTHNetSpec.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match=r"CTHNetSpec: unknown field\(s\) \['depth'\]"):
        CTHNetSpec.from_dict({"depth": 3})
    with pytest.raises(TypeError, match=r"CTHNetSpec.from_dict needs a dict, got list"):
        CTHNetSpec.from_dict([])  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [(4, 4), (2, 2, 2)])
@pytest.mark.parametrize("chunk", [None, 32, 1000])
def test_window_ordered_blocks_equal_roll_and_partition(window: tuple[int, ...], chunk: int | None) -> None:
    # run_blocks (one gather per block, optional in-place chunks) must equal the textbook
    # roll → partition → attention → reverse → roll of SwinBlock.forward.
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        SwinBlock(16, 4, window, shifted=i % 2 == 1, mlp_ratio=2, drop_path=0.0) for i in range(3)).eval()
    spatial = (8, 12) if len(window) == 2 else (4, 6, 8)
    x = torch.randn(2, *spatial, 16)
    ref = x
    for block in blocks:
        ref = block(ref)
    with torch.inference_mode():
        out = run_blocks(blocks, x.clone(), chunk)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_blocks(blocks, x, None), ref)                 # with autograd too


def test_chunked_inference_equals_plain_inference() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY).eval()
    x = torch.rand(2, 1, 4, 32, 32)
    with torch.inference_mode():
        plain = model(x)
        model.chunk_tokens = 256
        chunked = model(x)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)


def test_global_residual_starts_as_bis_and_keeps_the_schema() -> None:
    """Untrained, a global-residual CTHNet returns exactly the BIS interpolation of its window."""
    from synth.bspline import interpolate_z
    from synth.volume import CTVolume

    spec = dataclasses.replace(TINY, global_residual=True)
    model = CTHNet(spec).eval()
    assert list(model.state_dict()) == list(CTHNet(TINY).state_dict())      # parameter-free: same keys
    x = torch.rand(2, 1, spec.in_slices, 32, 32)
    with torch.no_grad():
        thin = model.forward_window(x)
    for b in range(2):
        bis = interpolate_z(CTVolume(x[b, 0].numpy(), (5.0, 1.0, 1.0)), spec.ratio).hu
        torch.testing.assert_close(thin[b, 0], torch.from_numpy(bis), atol=1e-5, rtol=0)
    # the correction is learnable: one step moves the output away from BIS
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    loss = (model(x) - 0.5).abs().mean()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model.eval().forward_window(x), thin)
