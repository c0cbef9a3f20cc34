"""Read the official CTHNet `.pkl` without the official code, without timm, and without running
any pickled class code.

The official training saves `{'net': <whole pickled TVSRN3d_v1 module>, 'config_dict': {...}}`. A
restricted unpickler admits only the tensor-rebuild functions and plain containers; every other
class becomes an inert stand-in that only keeps its pickled state, from which we read the
parameters and buffers (the same names `nn.Module.state_dict()` gives). Globals from modules that
can run code (builtins, os, subprocess, …) are refused outright, as is calling any stand-in.
Even so: load only files from a trusted source.
"""

from __future__ import annotations

import _compat_pickle
import ast
import collections
import os
import pickle
from typing import Any, ClassVar

import torch

from synth.checkpoint.common import (
    CheckpointError,
    CheckpointMetadata,
    LoadedWeights,
    check_state_dict,
    file_sha256,
)
from synth.nets import CTHNet, CTHNetSpec

_ADMITTED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("torch", name): getattr(torch, name) for name in (
        "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")},
}

# Module roots whose globals can execute code, touch files or processes, or import more modules.
_REFUSED_ROOTS = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib",
    "runpy", "pickle", "_pickle", "copyreg", "marshal", "types", "ctypes", "code", "codeop", "pty",
    "io", "_io", "operator", "functools", "itertools", "inspect", "pathlib", "tempfile", "urllib", "http",
    "webbrowser", "multiprocessing", "threading", "signal", "asyncio", "platform", "pydoc", "timeit",
    "pdb", "bdb", "trace", "glob", "zipfile", "tarfile", "sqlite3", "ssl", "numpy", "torch", "synth",
    "dicom_node", "setuptools", "pip", "distutils", "site", "gc", "weakref", "ast", "dis", "tokenize",
})
_STAND_IN_PREFIXES = ("torch.nn.modules.",)      # torch's own module classes become stand-ins too

# config_dict key → (CTHNetSpec field or None for a fixed value, expected fixed value)
_CONFIG_FIELDS: dict[str, str] = {
    "ratio": "ratio", "c_z": "in_slices", "c_y": "tile_size", "c_x": "tile_size",
    "T3dE_c": "enc_dim", "T3dE_l": "enc_layers", "T3dE_d": "enc_depth", "T3dE_n": "enc_heads",
    "T3dE_w": "enc_window", "TD_p": "t_fold", "TD_Tl": "t_layers", "TD_Td": "t_depth", "TD_Tw": "t_window",
    "TD_Il": "i_layers", "TD_Id": "i_depth", "TD_Iw": "i_window", "TD_n": "dec_heads", "T3d_mlp": "mlp_ratio",
}
_CONFIG_FIXED: dict[str, Any] = {"T_rc": "1conv", "T_mask": False, "TD_s": 1}
_CONFIG_REQUIRED = ("c_z", "T3dE_c", "TD_p", "TD_Iw", "TD_Tw", "TD_Il", "T_rc", "T_mask")


class UnsafeCheckpointError(CheckpointError):
    """The pickle names or calls something that could run code; nothing of it was executed."""


class _RefusedError(pickle.UnpicklingError):
    """Raised inside the unpickler; becomes UnsafeCheckpointError."""


class InertStandIn:
    """Takes the place of a pickled class: keeps the pickled state, runs none of the original code."""

    _origin: ClassVar[str] = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        # Unpickling a module object never calls its class (pickle protocol 2 uses NEWOBJ + BUILD);
        # a pickle that does is trying to run something.
        raise _RefusedError(f"the pickle calls {self._origin}(...); only module objects are admitted")

    def __setstate__(self, state: object) -> None:
        object.__setattr__(self, "_pickled_state", state)

    def pickled_dict(self) -> dict[str, Any]:
        state = getattr(self, "_pickled_state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]                       # (dict, slots) form
        return state if isinstance(state, dict) else {}


class RestrictedUnpickler(pickle.Unpickler):
    """find_class admits _ADMITTED, refuses _REFUSED_ROOTS, and turns any other class into a stand-in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[tuple[str, str], type[InertStandIn]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names (protocol 2, as torch.save writes) mapped first, as pickle itself would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _ADMITTED:
            return _ADMITTED[key]
        root = module.split(".")[0]
        if root in _REFUSED_ROOTS and not module.startswith(_STAND_IN_PREFIXES):
            raise _RefusedError(f"refusing global {module}.{name}: it could run code")
        if not name.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
            raise _RefusedError(f"refusing malformed global {module!r}.{name!r}")
        if key not in self._stand_ins:
            self._stand_ins[key] = type(name, (InertStandIn,), {"__module__": module, "_origin": f"{module}.{name}"})
        return self._stand_ins[key]


class _RestrictedPickleModule:
    """What torch.load(pickle_module=…) needs: an Unpickler class and a load function."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def read_official_pickle(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state_dict and config_dict of an official checkpoint, with no pickled code run."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False,
                         pickle_module=_RestrictedPickleModule)
    except _RefusedError as exc:
        raise UnsafeCheckpointError(path, f"unsafe official pickle, nothing executed: {exc}") from exc
    except (pickle.UnpicklingError, OSError, RuntimeError, EOFError, AttributeError, TypeError) as exc:
        raise CheckpointError(path, f"unreadable as an official CTHNet pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict) or "net" not in raw:
        raise CheckpointError(path, "is not an official CTHNet checkpoint (no 'net' entry)")
    net = raw["net"]
    if isinstance(net, InertStandIn):
        state: dict[str, torch.Tensor] = collections.OrderedDict()
        _collect_state(net, "", state, path)
    elif isinstance(net, dict) and all(isinstance(v, torch.Tensor) for v in net.values()):
        state = collections.OrderedDict(net)
    else:
        raise CheckpointError(path, f"'net' is neither a pickled module nor a state_dict ({type(net).__name__})")
    config = raw.get("config_dict")
    if not isinstance(config, dict):
        raise CheckpointError(path, "has no config_dict, so the architecture it was trained with is unknown")
    return state, dict(config)


def check_official_config(path: str | os.PathLike[str], config: dict[str, Any], spec: CTHNetSpec) -> None:
    """Refuse weights trained with a configuration other than `spec` (and the official fixed choices)."""
    if spec.global_residual:
        raise CheckpointError(path, "official weights were trained without global_residual; the spec asks for it")
    if missing := [k for k in _CONFIG_REQUIRED if k not in config]:
        raise CheckpointError(path, f"config_dict lacks {missing}, so it cannot be checked against the spec")
    expected: dict[str, Any] = {k: getattr(spec, f) for k, f in _CONFIG_FIELDS.items()} | _CONFIG_FIXED
    diffs = []
    for key, want in expected.items():
        if key not in config:
            continue
        got, want = _config_value(config[key]), _config_value(want)
        if got != want:
            diffs.append(f"{key}={got!r} (spec expects {want!r})")
    if diffs:
        raise CheckpointError(path, "trained with a configuration other than the CTHNet spec: " + ", ".join(diffs))


def load_official(path: str | os.PathLike[str], spec: CTHNetSpec | None = None) -> LoadedWeights:
    """Read, check the config and the state_dict schema, and compare the index buffers with ours."""
    spec = spec or CTHNetSpec()
    state, config = read_official_pickle(path)
    check_official_config(path, config, spec)
    check_state_dict(path, spec, state)
    ours = CTHNet(spec).state_dict()
    for key, value in state.items():
        if key.endswith("relative_position_index") and not torch.equal(value.long(), ours[key]):
            raise CheckpointError(path, f"{key} differs from the standard Swin index this code uses")
    metadata = CheckpointMetadata(training_data="official CTHNet release (Yu et al., npj Digit. Med. 2024)",
                                  code_version=f"official config {config.get('model', 'TVSRN3d_v1')}",
                                  notes="loaded from the official pickle with a restricted unpickler")
    return LoadedWeights(spec, dict(state), metadata, file_sha256(path), "official")


def _collect_state(obj: InertStandIn, prefix: str, out: dict[str, torch.Tensor],
                   path: str | os.PathLike[str]) -> None:
    """nn.Module.state_dict() naming: parameters, then persistent buffers, then children, recursively."""
    state = obj.pickled_dict()
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(path, f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, InertStandIn):
            raise CheckpointError(path, f"{prefix}{name} is a {type(child).__name__}, not a module")
        _collect_state(child, f"{prefix}{name}.", out, path)


def _config_value(value: Any) -> Any:
    """A config_dict value as a plain comparable value (the official code writes some as strings)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, list | tuple):
        return tuple(_config_value(v) for v in value)
    return value
