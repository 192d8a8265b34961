"""training.mixed_precision as Trainer arguments, and the same autocast for forward passes outside Trainer.

"auto" (the default) is bf16 autocast where the hardware runs bf16 natively, fp32 elsewhere: a CUDA GPU
that supports bf16, or a machine without an accelerator whose CPU has AVX512-BF16 or AMX (a LoRA step of
MiniLM 1.6x and of SmolLM2-135M 1.95x the fp32 tokens/s on the 2-core build machine, same validation
accuracy and exact match: benchmarks/precision.py). Weights and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("auto", "no", "bf16", "fp16")


def resolve_precision(precision: str) -> str:
    """ "auto" as "bf16" or "no" on this machine; any other value as it is."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16() else "no"


@functools.cache
def native_bf16() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if has_accelerator():
        return False  # MPS / XPU: not measured here, fp32 stays the safe choice
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def precision_arguments(precision: str) -> dict[str, bool]:
    """TrainingArguments for training.mixed_precision ("auto", "no", "bf16", "fp16"). Evaluating a saved run
    uses the same: test metrics are measured at the precision the model was trained and validated at."""
    precision = resolve_precision(precision)
    bf16 = precision == "bf16"
    return {
        "bf16": bf16,
        "fp16": precision == "fp16",
        # bf16 autocast on a machine without an accelerator: transformers wants the CPU named (without it,
        # it refuses bf16).
        "use_cpu": bf16 and not has_accelerator(),
    }


def autocast(precision: str, device: torch.device):
    """The autocast Trainer applies for ``precision``, for forward passes outside Trainer (generation,
    train-split metrics)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def has_accelerator() -> bool:
    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or torch.backends.mps.is_available()
    )
