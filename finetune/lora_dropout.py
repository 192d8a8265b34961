"""LoRA dropout that keeps no copy of its input for the backward pass.

peft computes ``lora_B(lora_A(dropout(x)))``: autograd keeps the dropped-out input of every adapted layer
(a new tensor the size of the layer's input) for lora_A's weight gradient, and the dropout mask beside
it. With LoRA on every linear layer that is one extra activation per layer: 0.48 GiB of a SmolLM2-135M
run's 3.0 GiB peak at batch 8 x 112 tokens (benchmarks/RESULTS.md). ``DropoutLinear`` applies the dropout
and lora_A in one autograd function that keeps only ``x`` (shared with the other layers reading the
same input, as peft's no-dropout path keeps it) and a seed: backward draws the same mask again.

The mathematics is peft's (inverted dropout, keep probability 1 - p, then lora_A); only the random
stream differs, so a run is not bit-identical to peft's but equal in distribution. Saved adapters keep
peft's names (``lora_A.<adapter>.weight``) and config, and load with plain peft.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def _kept_and_scaled(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The inverted-dropout multiplier for ``x`` (0 or 1 / (1 - p)), the same for the same seed."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    keep = torch.empty(x.shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p, generator=generator)
    return keep.div_(1.0 - p)


class _DropoutThenLinear(torch.autograd.Function):
    """``linear(dropout(x), weight)`` keeping ``x`` and a seed, not the dropped-out input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        # Under autocast F.linear runs in the autocast dtype, as peft's nn.Linear would.
        return functional.linear(x * _kept_and_scaled(x, p, seed), weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        scale = _kept_and_scaled(x, ctx.p, ctx.seed)
        compute = grad_output.dtype  # the forward's dtype (bf16 under autocast), as autograd would use
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_output @ weight.to(compute)).to(x.dtype) * scale
        if ctx.needs_input_grad[1]:
            rows = grad_output.reshape(-1, grad_output.shape[-1])
            dropped = (x * scale).reshape(-1, x.shape[-1]).to(compute)
            grad_weight = (rows.T @ dropped).to(weight.dtype)
        return grad_x, grad_weight, None, None


class DropoutLinear(nn.Linear):
    """peft's ``lora_A`` (bias-free nn.Linear) with its dropout folded in; the same weight Parameter."""

    def __init__(self, lora_a: nn.Linear, p: float) -> None:
        super().__init__(lora_a.in_features, lora_a.out_features, bias=False, device="meta")
        self.weight = lora_a.weight
        self.p = p
        self.train(lora_a.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return functional.linear(x, self.weight)
        # Drawn from torch's global generator, so a seeded run repeats and activation checkpointing,
        # which restores that generator before recomputing, draws the same mask.
        seed = int(torch.randint(0, 2**62, ()))
        return _DropoutThenLinear.apply(x, self.weight, self.p, seed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fold_lora_dropout(model: nn.Module) -> int:
    """Replace each plain LoRA linear layer's dropout + lora_A by a ``DropoutLinear``; returns how many.

    Left as peft builds them: DoRA and other variants (their forward takes the dropout module itself),
    non-linear layers (embeddings, convolutions), a lora_A with a bias, and dropout 0 (nothing to save).
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    folded = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLinear):
            continue
        for adapter, dropout in list(layer.lora_dropout.items()):
            lora_a = layer.lora_A[adapter] if adapter in layer.lora_A else None
            plain = type(lora_a) is nn.Linear and lora_a.bias is None and adapter not in layer.lora_variant
            if not (plain and isinstance(dropout, nn.Dropout) and dropout.p > 0):
                continue
            layer.lora_A[adapter] = DropoutLinear(lora_a, dropout.p)
            layer.lora_dropout[adapter] = nn.Identity()
            folded += 1
    return folded
