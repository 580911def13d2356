"""Where and in which precision to compute."""

from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import nullcontext

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware computes in bf16 natively, else full fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at twice the fp32 rate (bench/precision.py)."""
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
    return None
