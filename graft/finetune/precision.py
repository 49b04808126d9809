"""Fine-tuning's arithmetic: bfloat16 autocast where the device computes it natively, float32
elsewhere (`--precision auto`).

Autocast runs convolutions and matrix products in bfloat16 and keeps the weights, the optimiser
and the reductions (BatchNorm statistics, the loss) in float32: standard mixed precision. A CUDA
GPU has native bfloat16; so does a CPU with AVX512-BF16 or AMX, where oneDNN's bfloat16 kernels
ran fine-tuning's epochs 1.3-1.6x faster than float32 here, at the same held-out accuracy within
its noise (bench/ladder_real.py: the fp32 rows beside their bf16 twins, docs/benchmarks.md).
Without those instructions bfloat16 is emulated, slower than float32, so `auto` keeps float32."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from graft._util.cpu import cpu_has_native_bf16
from graft.backbones.bf16_engine import PRECISIONS
from graft.errors import GraftError


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise GraftError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def autocast(device: torch.device, precision: str = "auto"):
    """The context a training or validation step runs in on `device`."""
    if not uses_bf16(device, precision):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
