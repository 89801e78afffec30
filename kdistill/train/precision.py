"""Numeric precision and thread count chosen for the machine the code runs on.

`auto` must never pick a precision the hardware only emulates: on a CPU without AVX512-BF16 or AMX, bf16 autocast is
about 20x slower than fp32 (measured: one all-MiniLM-L6-v2 training step, 34 s vs 1.6 s on an AVX2 machine).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Literal

import torch

PrecisionSpec = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_capability() -> str:
    """What torch's CPU kernels dispatch to (`AVX2`, `AVX512`, ...): quoted beside every speed figure."""
    return torch.backends.cpu.get_cpu_capability()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_cpu_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), so autocast to bf16 is a speed-up."""
    probe = getattr(torch._C, "_cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(probe, name, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


# Replaceable in tests: (device) -> whether bf16 runs natively there.
_bf16_probe: Callable[[torch.device], bool] | None = None


def set_bf16_probe(probe: Callable[[torch.device], bool] | None) -> None:
    global _bf16_probe
    _bf16_probe = probe


def native_bf16(device: torch.device) -> bool:
    if _bf16_probe is not None:
        return _bf16_probe(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and native_cpu_bf16()


def resolve_precision(spec: str, device: torch.device | str = "cpu") -> str:
    """`auto` -> bf16 where it is native, fp16 on CUDA devices without bf16, fp32 otherwise; others pass through."""
    device = torch.device(device)
    if spec not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16 (got {spec!r})")
    if spec == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (CPU fp16 autocast is slow and loses accuracy); use auto, fp32 or bf16")
    if spec != "auto":
        return spec
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str = "cpu") -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(spec: int | str) -> int:
    """`auto` -> this process's CPUs; the flow sets KDISTILL_THREADS to its share when stages run side by side,
    and the processes torchrun starts on one machine (LOCAL_WORLD_SIZE) split that share."""
    if spec != "auto":
        return int(spec)
    env = os.environ.get("KDISTILL_THREADS")
    cpus = max(1, int(env)) if env else available_cpus()
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@dataclass(frozen=True)
class Runtime:
    """What a stage resolved for this machine; printed, logged to MLflow and written in reports and model cards."""

    device: str
    precision: str
    threads: int
    cpu_capability: str
    processes: int = 1  # data-parallel processes of the stage (torchrun); threads are per process

    def describe(self) -> str:
        procs = f"{self.processes} processes x " if self.processes > 1 else ""
        return (f"device {self.device}, precision {self.precision}, {procs}{self.threads} threads, "
                f"CPU capability {self.cpu_capability}")
