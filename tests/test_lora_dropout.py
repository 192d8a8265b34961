"""LoRA dropout folded into lora_A: peft's gradients for the same mask, peft's adapter, less kept for backward."""

import copy

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import AutoModelForCausalLM

from finetune.config import MethodConfig
from finetune.lora_dropout import DropoutLinear, _DropoutThenLinear, _kept_and_scaled, fold_lora_dropout
from finetune.methods import apply_method


def test_the_fused_function_has_the_gradients_of_dropout_then_linear():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, w: _DropoutThenLinear.apply(x, w, 0.3, 7), (x, weight))

    # Against autograd through x * mask then linear, with the mask of the same seed.
    fused = _DropoutThenLinear.apply(x, weight, 0.3, 7)
    fused_grads = torch.autograd.grad(fused.square().sum(), (x, weight))
    reference = torch.nn.functional.linear(x * _kept_and_scaled(x, 0.3, 7), weight)
    reference_grads = torch.autograd.grad(reference.square().sum(), (x, weight))
    torch.testing.assert_close(fused, reference)
    for ours, theirs in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours, theirs)
    # The seed is the mask: another seed drops other inputs.
    assert not torch.equal(_kept_and_scaled(x, 0.3, 7), _kept_and_scaled(x, 0.3, 8))


def test_the_fused_function_under_bf16_autocast_matches_autocast_linear():
    torch.manual_seed(0)
    x = torch.randn(8, 16, requires_grad=True)
    weight = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _DropoutThenLinear.apply(x, weight, 0.1, 3)
        reference = torch.nn.functional.linear(x * _kept_and_scaled(x, 0.1, 3), weight)
    assert fused.dtype == reference.dtype == torch.bfloat16
    fused_grads = torch.autograd.grad(fused.float().sum(), (x, weight))
    reference_grads = torch.autograd.grad(reference.float().sum(), (x, weight))
    torch.testing.assert_close(fused, reference)
    for ours, theirs in zip(fused_grads, reference_grads, strict=True):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)


def _lora_model(tiny_llama, **method):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = MethodConfig(name=method.pop("name", "lora"), target_modules="all-linear", lora_dropout=0.2, **method)
    return apply_method(base, config, "causal_lm")


def _unfolded(model):
    """``model`` with peft's own dropout + nn.Linear back in place of each DropoutLinear (same weights)."""
    for layer in model.modules():
        if hasattr(layer, "lora_dropout") and isinstance(layer.lora_A["default"], DropoutLinear):
            folded = layer.lora_A["default"]
            linear = torch.nn.Linear(folded.in_features, folded.out_features, bias=False)
            linear.weight = folded.weight
            layer.lora_A["default"], layer.lora_dropout["default"] = linear, torch.nn.Dropout(folded.p)
    assert not any(isinstance(m, DropoutLinear) for m in model.modules())
    return model


def _batch(model) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, model.config.vocab_size, (4, 12), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def test_a_lora_model_gets_the_fold_on_every_adapted_linear_layer_and_keeps_peft_adapter_names(tiny_llama):
    model = _lora_model(tiny_llama)
    folded = [m for m in model.modules() if isinstance(m, DropoutLinear)]
    # tiny_llama: 2 layers x (q, k, v, o, gate, up, down)
    assert len(folded) == 14 and {m.p for m in folded} == {0.2}
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert all(".lora_A.default.weight" in name for name, p in model.named_parameters() if "lora_A" in name)
    saved = get_peft_model_state_dict(model)
    assert sum(".lora_A." in key for key in saved) == 14  # what peft writes and reloads


def test_eval_is_peft_unchanged_and_training_drops_the_configured_fraction(tiny_llama):
    model = _lora_model(tiny_llama)
    torch.manual_seed(0)
    plain = apply_method(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        MethodConfig(name="dora", target_modules="all-linear", lora_dropout=0.2),
        "causal_lm",
    )
    # DoRA's forward takes the dropout module itself: left as peft builds it.
    assert not any(isinstance(m, DropoutLinear) for m in plain.modules())

    batch = _batch(model)
    unfolded = _unfolded(copy.deepcopy(model))
    # B starts at zero in peft: give the adapters a say so dropout changes the output.
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    unfolded.load_state_dict(model.state_dict())
    model.eval(), unfolded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, unfolded(**batch).loss, rtol=0, atol=0)

    model.train()
    layer = next(m for m in model.modules() if isinstance(m, DropoutLinear))
    seen = []
    layer.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        first, second = model(**batch).loss, model(**batch).loss
    assert first != second  # a new mask per step
    # The multiplier is 0 or 1 / 0.8; its kept fraction is about 0.8.
    kept = (_kept_and_scaled(seen[0], 0.2, 123) > 0).float().mean().item()
    assert kept == pytest.approx(0.8, abs=0.05)


def _seeded_step_gradients(tiny_llama, *, checkpointing: bool = False) -> list[torch.Tensor]:
    """The adapters' gradients after one training step seeded 5 (lora_B nonzero, so every mask matters)."""
    model = _lora_model(tiny_llama)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.fill_(0.1)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    torch.manual_seed(5)
    model(**_batch(model)).loss.backward()
    return [p.grad for p in model.parameters() if p.requires_grad]


def test_a_seeded_training_step_repeats(tiny_llama):
    first, second = _seeded_step_gradients(tiny_llama), _seeded_step_gradients(tiny_llama)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_activation_checkpointing_recomputes_the_same_mask(tiny_llama):
    plain, checkpointed = _seeded_step_gradients(tiny_llama), _seeded_step_gradients(tiny_llama, checkpointing=True)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def _bytes_kept_for_backward(model) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one training forward."""
    kept: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        kept[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**_batch(model))
    return sum(kept.values())


def test_the_fold_keeps_less_for_backward_than_peft_dropout(tiny_llama):
    folded = _lora_model(tiny_llama)
    assert fold_lora_dropout(folded) == 0  # already folded: nothing left to fold
    peft_dropout = _unfolded(_lora_model(tiny_llama))
    ours, peft = _bytes_kept_for_backward(folded), _bytes_kept_for_backward(peft_dropout)
    # peft keeps each layer's dropped-out input (4 x 12 rows x its input width, fp32) and a mask.
    inputs = 2 * (5 * 32 + 32 + 64) * 4 * 12 * 4  # 2 layers; q, k, v, gate, up read 32 wide, o 32, down 64
    assert peft - ours >= inputs
