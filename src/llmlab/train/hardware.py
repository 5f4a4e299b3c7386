"""The machine a run trains on: which device and precision, its matmul peak (for MFU), and a description."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from llmlab.errors import ConfigError
from llmlab.files import write_json

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), for MFU on GPUs.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device named (auto: CUDA, then MPS, then CPU). Process `local_rank` of a multi-process run takes
    the GPU of that index, and there must be one: two processes sharing a GPU would both slow down."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name != "cuda":
        return torch.device(name)
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"process {local_rank} of this run needs GPU {local_rank}, but {torch.cuda.device_count()} "
            "are visible: start at most that many processes per node, or train on the CPU (--set device=cpu)"
        )
    return torch.device("cuda", local_rank)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """bf16 where the device computes it natively (CUDA with bf16 support); None (plain fp32) elsewhere.

    On CPU bf16 matmuls are roughly 100x slower than fp32 here, so "auto" keeps CPU training in fp32.
    """
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for the forward pass, or a no-op in fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def measure_matmul_flops(size: int = 1024, seconds: float = 0.5, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu") -> float:
    """Achieved FLOP/s of square matmuls on this device: the practical peak that MFU is measured against.

    The operands come from a private generator: measuring must not move the global RNG, which a resumed
    run has just restored (dropout would then draw different masks than the uninterrupted run).
    """
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=generator)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t))
    return best


def peak_cache_path() -> Path:
    """Where the best matmul speeds measured on this machine are kept ($LLMLAB_CACHE_DIR or ~/.cache/llmlab)."""
    root = os.environ.get("LLMLAB_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmlab"
    return Path(root) / "matmul_peak.json"


def best_measured_peak(key: str, measured: float) -> float:
    """The highest of `measured` and every earlier measurement under `key` on this machine, remembered.

    A measurement taken while other jobs share the cores reads low, and an MFU divided by it reads high
    (above 100% on a busy machine). The best speed ever seen on the machine is the closer estimate of
    what it can do, so that is the denominator; it only improves with time.
    """
    path = peak_cache_path()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    previous = known.get(key)
    previous = float(previous) if isinstance(previous, (int, float)) else 0.0
    if measured > previous:
        try:
            write_json(path, {**known, key: measured})
        except OSError:  # a read-only home directory: this run's figure still serves
            pass
    return max(measured, previous)


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> tuple[float, str]:
    """(FLOP/s, where the number came from): a datasheet value for known GPUs, else the best measurement."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value, f"{name} datasheet bf16 dense"
    dtype_name = str(dtype or torch.float32).removeprefix("torch.")
    measured = measure_matmul_flops(size=4096 if device.type == "cuda" else 1024, dtype=dtype or torch.float32,
                                    device=device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    threads = torch.get_num_threads()
    best = best_measured_peak(f"{machine} | {device.type} | {threads} threads | {dtype_name}", measured)
    return best, f"best {dtype_name} matmul speed measured on this machine, {threads} threads"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict[str, str | int]:
    """What the report says about the machine."""
    info: dict[str, str | int] = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    return info
