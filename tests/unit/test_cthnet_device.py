"""Device and precision selection; GPU parity and speed checks (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.device import DeviceUnavailableError, resolve_device, resolve_precision
from synth.engine import CTHNetSynthesizer, to_device
from synth.nets import CTHNet, CTHNetSpec
from synth.volume import CTVolume
from tests.support.tiny_cthnet import TINY

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_precision_is_fp32_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") is None and resolve_precision(cpu, "fp32") is None
    assert resolve_precision(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match=r"precision 'fp16' needs a CUDA device; use fp32 or bf16 on CPU"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(ValueError, match=r"precision must be one of"):
        resolve_precision(cpu, "half")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "mps"])
def test_unknown_device_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"device must be auto, cpu, cuda or cuda:N, got '{name}'"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_named_error(name: str) -> None:
    with pytest.raises(DeviceUnavailableError, match=rf"device '{name}' requested but CUDA is not available"):
        resolve_device(name)


@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_matches_fp32() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY)
    rng = np.random.default_rng(0)
    volume = CTVolume(rng.uniform(-1000, 1000, (6, 70, 50)).astype(np.float32), (5.0, 0.7, 0.7))
    fp32 = CTHNetSynthesizer(model, weights_sha256="", device="cuda", precision="fp32", batch_size=4)(volume)
    bf16 = CTHNetSynthesizer(model, weights_sha256="", device="cuda", precision="bf16", batch_size=4)(volume)
    cpu = CTHNetSynthesizer(model.cpu(), weights_sha256="", device="cpu")(volume)
    np.testing.assert_allclose(fp32.hu, cpu.hu, atol=1.0)
    assert float(np.abs(bf16.hu - fp32.hu).mean()) < 10.0


@pytest.mark.gpu
@needs_cuda
def test_gpu_default_spec_window_runs() -> None:
    model = CTHNet(CTHNetSpec()).cuda().eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.rand(2, 1, 8, 256, 256, device="cuda"))
    assert out.shape == (2, 1, 30, 256, 256)


def test_to_device_on_cpu_keeps_the_values() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]           # not contiguous
    tensor = to_device(array, torch.device("cpu"))
    assert tensor.device.type == "cpu" and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy(), array)


@pytest.mark.gpu
@needs_cuda
def test_to_device_on_cuda_goes_through_pinned_memory() -> None:
    array = np.random.default_rng(0).random((5, 64, 64), dtype=np.float32)
    tensor = to_device(array, torch.device("cuda"))
    torch.cuda.synchronize()
    assert tensor.device.type == "cuda"
    np.testing.assert_array_equal(tensor.cpu().numpy(), array)


@pytest.mark.gpu
@needs_cuda
def test_gpu_whole_plane_series_matches_cpu() -> None:
    torch.manual_seed(0)
    model = CTHNet(TINY)
    volume = CTVolume(np.random.default_rng(1).uniform(-1000, 1000, (9, 96, 80)).astype(np.float32),
                      (5.0, 0.7, 0.7))
    gpu = CTHNetSynthesizer(model, weights_sha256="", device="cuda", precision="fp32", batch_size=4)
    assert len(gpu.plan(volume.shape)) == len(gpu.plan(volume.shape).z.in_starts)
    out = gpu(volume).hu
    cpu = CTHNetSynthesizer(model.cpu(), weights_sha256="", device="cpu")(volume).hu
    np.testing.assert_allclose(out, cpu, atol=1.0)
