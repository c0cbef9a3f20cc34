"""The official `.pkl` (a whole pickled model + config) loads strictly, with no pickled code run."""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from synth.checkpoint import CheckpointError, build_model, load_weights
from synth.checkpoint.official import UnsafeCheckpointError, load_official, read_official_pickle
from synth.nets import CTHNet, CTHNetSpec
from synth.nets.blocks import DropPath, Mlp, SwinBlock, WindowAttention
from synth.nets.cthnet import RSTB, CTHLayer3d, Encoder3d, PatchNorm, ResidualGroup, SwinDecoder2d
from tests.support.tiny_cthnet import TINY


def official_config(spec: CTHNetSpec) -> collections.OrderedDict[str, Any]:
    """config_dict as the official training writes it (all.txt keys plus run keys)."""
    return collections.OrderedDict(
        ratio=spec.ratio, c_z=spec.in_slices, c_y=spec.tile_size, c_x=spec.tile_size, vc_z=spec.in_slices,
        vc_y=spec.tile_size, vc_x=spec.tile_size, T_mask=False, T_pos=True, T3d_mlp=spec.mlp_ratio,
        T_rc="1conv", T3dE_w=list(spec.enc_window), T3dE_l=spec.enc_layers, T3dE_d=spec.enc_depth,
        T3dE_n=spec.enc_heads, T3dE_c=spec.enc_dim, TD_s=1, TD_p=spec.t_fold, TD_n=spec.dec_heads,
        TD_Td=spec.t_depth, TD_Tl=spec.t_layers, TD_Tw=spec.t_window, TD_Id=spec.i_depth,
        TD_Il=spec.i_layers, TD_Iw=spec.i_window, epoch=3000, lr=0.0003, mode="train",
        model="TVSRN3d_v1", net_idx="CTHNet", path_key="HD",
    )


def _official_name(qualified: str, module: nn.Module) -> tuple[str, str]:
    three_d = qualified.startswith("Encoder")
    names: dict[type[nn.Module], tuple[str, str]] = {
        CTHNet: ("net.model_TransSR", "TVSRN3d_v1"),
        Encoder3d: ("net.swin_utils_3d", "SwinTransformer3Dv3"),
        CTHLayer3d: ("net.swin_utils_3d", "BasicLayer"),
        SwinDecoder2d: ("net.swin_utils", "Swin_backbone"),
        PatchNorm: ("net.swin_utils", "PatchEmbed"),
        RSTB: ("net.swin_utils", "RSTB"),
        ResidualGroup: ("net.swin_utils", "BasicLayer"),
        Mlp: ("net.swin_utils", "Mlp"),
        DropPath: ("timm.models.layers.drop", "DropPath"),
    }
    if isinstance(module, SwinBlock | WindowAttention | Mlp) and three_d:
        return "net.swin_utils_3d", type(module).__name__.replace("SwinBlock", "SwinTransformerBlock") + "3D" * (
            not isinstance(module, Mlp))
    if isinstance(module, SwinBlock):
        return "net.swin_utils", "SwinTransformerBlock"
    if isinstance(module, WindowAttention):
        return "net.swin_utils", "WindowAttention"
    return names[type(module)]


def write_official_pickle(path: Path, model: CTHNet, config: dict[str, Any],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Pickle `model` the way the official training does, its classes under the official paths."""
    with monkeypatch.context() as patch:
        patch.delattr(model, "spec")                         # the official model has no such attribute
        fakes: dict[tuple[str, str], type] = {}
        for qualified, module in model.named_modules():
            if type(module).__module__.startswith("torch.nn"):
                continue
            mod_name, cls_name = _official_name(qualified, module)
            if (mod_name, cls_name) not in fakes:
                parts = mod_name.split(".")
                for i in range(1, len(parts) + 1):       # packages too: pickle imports `net` first
                    name = ".".join(parts[:i])
                    if name not in sys.modules:
                        patch.setitem(sys.modules, name, types.ModuleType(name))
                fake = type(cls_name, (type(module),), {"__module__": mod_name, "__qualname__": cls_name})
                setattr(sys.modules[mod_name], cls_name, fake)
                fakes[(mod_name, cls_name)] = fake
            module.__class__ = fakes[(mod_name, cls_name)]
        torch.save({"net": model, "config_dict": config}, path)
    for mod_name in {m for m, _ in fakes}:
        assert mod_name not in sys.modules                   # the loader has no official code to lean on


def test_official_default_pickle_loads_strictly_and_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model = CTHNet(CTHNetSpec())
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "best_checkpoint.pkl"
    write_official_pickle(path, model, official_config(CTHNetSpec()), monkeypatch)
    state, config = read_official_pickle(path)
    assert list(state) == list(expected) and len(state) == 258          # same names, same order
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert config["T_rc"] == "1conv"
    weights = load_weights(path)
    assert weights.source == "official" and weights.spec == CTHNetSpec()
    fresh = CTHNet(CTHNetSpec())
    fresh.load_state_dict(weights.state_dict, strict=True)


def test_official_tiny_pickle_gives_the_same_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    model = CTHNet(TINY).eval()
    x = torch.rand(1, 1, 4, 32, 32)
    with torch.inference_mode():
        before = model(x)
    path = tmp_path / "tiny.pkl"
    write_official_pickle(path, model, official_config(TINY), monkeypatch)
    loaded = build_model(load_official(path, TINY))
    with torch.inference_mode():
        assert torch.equal(loaded(x), before)


class _Payload:
    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@pytest.mark.parametrize(
    ("func", "args", "message"),
    [
        (os.system, ("touch {marker}",), r"refusing global (posix|os|nt)\.system: it could run code"),
        (eval, ("open({marker!r}, 'w')",), r"refusing global builtins\.eval: it could run code"),
        (torch.load, ("{marker}",), r"refusing global torch\.serialization\.load"),
        (subprocess.Popen, (["touch", "{marker}"],), r"refusing global subprocess\.Popen"),
    ],
)
def test_a_pickle_naming_a_dangerous_callable_is_refused(tmp_path: Path, func: Any, args: tuple[Any, ...],
                                                        message: str) -> None:
    marker = tmp_path / "pwned"
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str)
                 else [b.format(marker=str(marker)) for b in a] if isinstance(a, list) else a for a in args)
    path = tmp_path / "evil.pkl"
    torch.save({"net": _Payload(func, args), "config_dict": {}}, path)
    with pytest.raises(UnsafeCheckpointError, match=message):
        load_official(path)
    assert not marker.exists()


def test_a_pickle_calling_a_stand_in_class_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("net.evil")
    monkeypatch.setitem(sys.modules, "net", types.ModuleType("net"))
    monkeypatch.setitem(sys.modules, "net.evil", mod)
    cls = type("Loader", (), {"__module__": "net.evil"})
    mod.Loader = cls  # type: ignore[attr-defined]
    path = tmp_path / "evil.pkl"
    torch.save({"net": _Payload(cls, ("x",)), "config_dict": {}}, path)
    monkeypatch.delitem(sys.modules, "net.evil")
    monkeypatch.delitem(sys.modules, "net")
    with pytest.raises(UnsafeCheckpointError, match=r"the pickle calls net\.evil\.Loader\(\.\.\.\)"):
        load_official(path)


def test_refused_through_load_weights_too(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    torch.save({"net": _Payload(os.system, ("true",)), "config_dict": {}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"unsafe official pickle, nothing executed"):
        load_weights(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"T_mask": True}, r"configuration other than the CTHNet spec: T_mask=True \(spec expects False\)"),
        ({"TD_Iw": 7, "c_z": "8"}, r"c_z=8 \(spec expects 4\), TD_Iw=7 \(spec expects 4\)"),
        ({"T3dE_w": "[2, 2, 4]"}, r"T3dE_w=\(2, 2, 4\) \(spec expects \(2, 2, 2\)\)"),
        ({"T_rc": "2conv"}, r"T_rc='2conv' \(spec expects '1conv'\)"),
    ],
)
def test_a_different_saved_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             changes: dict[str, Any], message: str) -> None:
    path = tmp_path / "other.pkl"
    write_official_pickle(path, CTHNet(TINY), official_config(TINY), monkeypatch)
    state, config = read_official_pickle(path)
    config.update(changes)
    torch.save({"net": state, "config_dict": config}, path)      # a state_dict form is accepted too
    with pytest.raises(CheckpointError, match=message):
        load_official(path, TINY)


def test_official_weights_refuse_a_global_residual_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "official.pkl"
    write_official_pickle(path, CTHNet(TINY), official_config(TINY), monkeypatch)
    with pytest.raises(CheckpointError, match=r"trained without global_residual"):
        load_official(path, dataclasses.replace(TINY, global_residual=True))


def test_missing_config_and_wrong_content_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    torch.save({"net": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"has no config_dict, so the architecture it was trained with"):
        load_official(path)
    torch.save({"net": {"w": torch.zeros(1)}, "config_dict": {"c_z": 8}}, path)
    with pytest.raises(CheckpointError, match=r"config_dict lacks \['T3dE_c', 'TD_p'"):
        load_official(path)
    torch.save({"net": {"w": torch.zeros(1)}, "config_dict": official_config(CTHNetSpec())}, path)
    with pytest.raises(CheckpointError, match=r"not match the CTHNet spec: 258 missing .*1 unexpected \(first w\)"):
        load_official(path)
    torch.save({"weights": 1}, path)
    with pytest.raises(CheckpointError, match=r"is not an official CTHNet checkpoint \(no 'net' entry\)"):
        load_official(path)
    torch.save({"net": [1, 2], "config_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"'net' is neither a pickled module nor a state_dict \(list\)"):
        load_official(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"unreadable as an official CTHNet pickle \(UnpicklingError"):
        load_official(path)
