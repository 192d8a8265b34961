"""training.mixed_precision as Trainer arguments, and the same autocast for forward passes outside Trainer."""

from __future__ import annotations

import torch


def precision_arguments(precision: str) -> dict[str, bool]:
    """TrainingArguments for training.mixed_precision ("no", "bf16", "fp16"). Evaluating a saved run uses
    the same: test metrics are measured at the precision the model was trained and validated at."""
    bf16 = precision == "bf16"
    return {
        "bf16": bf16,
        "fp16": precision == "fp16",
        # bf16 autocast on a machine without an accelerator: transformers wants the CPU named (without it,
        # it refuses bf16); CPUs with bf16 instructions run a LoRA step about twice as fast.
        "use_cpu": bf16 and not has_accelerator(),
    }


def autocast(precision: str, device: torch.device):
    """The autocast Trainer applies for ``precision``, for forward passes outside Trainer (generation,
    train-split metrics)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def has_accelerator() -> bool:
    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or torch.backends.mps.is_available()
    )
