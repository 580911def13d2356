"""Where and in which precision to compute."""

from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import contextmanager, nullcontext

import torch

from tinylm.errors import UserError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def pick_device(name: str = "auto") -> torch.device:
    """The one place that decides where to compute. auto: a CUDA GPU, else Apple's MPS, else
    the CPU; otherwise the device named, refused in one sentence where it is not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or name != name.strip():
        raise UserError(f"Unknown device '{name}'; choose {DEVICES}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise UserError(
                f"--device {name}: CUDA is not available ({why}); use --device cpu or auto."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
    if device.type == "mps" and not _mps_available():
        raise UserError(
            f"--device {name}: Apple's MPS is not available here; use --device cpu or auto."
        )
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware computes in bf16 natively, else full fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "mps":
        return None  # fp32: bf16 autocast on MPS is neither complete nor faster everywhere
    return torch.bfloat16 if cpu_has_native_bf16() else None


# oneDNN's instruction sets (ONEDNN_MAX_CPU_ISA) that compute in bf16 natively
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1", "ALL", "DEFAULT")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at twice the fp32 rate (bench/precision.py). Not
    where ONEDNN_MAX_CPU_ISA holds oneDNN below them (AVX2, say): bf16 would be emulated."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not isa.startswith(BF16_ISAS):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read(200_000)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None: it builds C++ on a CPU, Triton on a GPU."""
    if device.type == "cpu":
        compilers = (os.environ.get("CXX"), "g++", "c++", "clang++")
        if not any(shutil.which(c) for c in compilers if c):
            return "no C++ compiler found (torch.compile needs one on a CPU)"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed (torch.compile needs it on a GPU)"
    elif device.type == "mps":
        return "torch.compile is not used on MPS (its support there is experimental)"
    return None


@contextmanager
def deterministic_compiled_kernels(device: torch.device, compiled: bool):
    """While a compiled model trains on a CPU: torch's deterministic mode, so that the same seed
    gives the same bits, and a resumed run those of an uninterrupted one.

    Inductor lowers the embedding's backward (index_put with accumulate) to a scatter whose
    OpenMP threads atomic_add rows of tokens into the gradient: with more than one thread the
    order of those additions, and so the gradient's last bits, change from step to step and run
    to run (17 different gradients in 20 repeats of one step). In deterministic mode Inductor
    calls ATen's index_put_ instead, which accumulates serially on a CPU (and alone took less
    time than the racing scatter: 159 against 358 us for `words`); every other kernel it builds
    is unchanged. The mode is part of Inductor's cache key, and must hold while the backward
    compiles (at the first step). `warn_only`, so an op without a deterministic form warns
    rather than fails, and `fill_uninitialized_memory` off (it would only cost time)."""
    if not compiled or device.type != "cpu":
        yield
        return
    settings = torch.utils.deterministic
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        settings.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    settings.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        settings.fill_uninitialized_memory = before[2]


def use_tensor_cores(device: torch.device, precision: str) -> None:
    """On a GPU under precision auto, let fp32 matmuls use TF32 tensor cores (as nanoGPT does);
    precision fp32 keeps full fp32."""
    if device.type == "cuda" and precision == "auto":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on the device; to a GPU from pinned memory, without waiting for the copy."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}
