"""Build the peft config of a method (full fine-tuning has none) and wrap the model."""

from __future__ import annotations

import inspect

from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
from transformers import PreTrainedModel

from finetune.architecture import attention_linear_layers, linear_layers_outside_head
from finetune.config import MethodConfig
from finetune.errors import ConfigError
from finetune.lora_dropout import fold_lora_dropout

TASK_TYPES = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM}


def build_peft_config(method: MethodConfig, task: str, model_type: str) -> PeftConfig | None:
    """The peft config for ``method`` (None for full fine-tuning).

    For classification, peft's SEQ_CLS task type puts the new head (``classifier``/``score``) in
    modules_to_save: it is trained and saved with the adapter, so a reloaded adapter predicts the same.
    """
    task_type = TASK_TYPES[task]
    targets = method.target_modules
    if method.name == "full":
        return None
    if method.name in ("lora", "dora"):
        # "attention" is resolved on the model by apply_method; "auto" is all linear layers.
        lora_targets = {"peft-default": None, "auto": "all-linear", "attention": "all-linear"}
        return LoraConfig(
            task_type=task_type,
            r=method.lora_r,
            lora_alpha=method.lora_alpha,
            lora_dropout=method.lora_dropout,
            use_rslora=method.use_rslora,
            use_dora=method.name == "dora",
            target_modules=lora_targets.get(targets, targets) if isinstance(targets, str) else targets,
        )
    if method.name == "ia3":
        feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
        if targets in ("auto", "peft-default"):
            if feedforward is None:
                raise ConfigError(
                    f"method.target_modules: peft has no default IA3 modules for model type {model_type!r}; "
                    "list the module names"
                )
            return IA3Config(task_type=task_type)
        if targets in ("all-linear", "attention"):
            raise ConfigError(f"method.target_modules={targets!r} is not supported for ia3; list module names")
        ff = [name for name in targets if any(name.endswith(f) for f in feedforward or [])]
        return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=ff)
    if method.name == "prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    if method.name == "prefix_tuning":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=method.num_virtual_tokens)
    raise ConfigError(f"method.name: unknown method {method.name!r}")


def apply_method(model: PreTrainedModel, method: MethodConfig, task: str) -> PreTrainedModel:
    peft_config = build_peft_config(method, task, model.config.model_type)
    if peft_config is None:
        return model
    if method.target_modules == "attention" and method.name in ("lora", "dora"):
        peft_config.target_modules = attention_linear_layers(model)
    elif method.head == "mlp" and getattr(peft_config, "target_modules", None) == "all-linear":
        # peft's all-linear leaves out a linear head but would adapt the MLP head's layers, which are
        # already trained whole (modules_to_save): list the backbone's linear layers instead.
        peft_config.target_modules = linear_layers_outside_head(model)
    if method.name == "prefix_tuning" and task == "classification":
        _check_prefix_tuning_support(model)
    model = get_peft_model(model, peft_config)
    if method.name == "lora":
        fold_lora_dropout(model)  # same training, without a copy of every adapted layer's input
    return model


def _check_prefix_tuning_support(model: PreTrainedModel) -> None:
    # peft's prefix tuning for classification passes the prefix as `past_key_values`, and raises at the
    # first step when the backbone's forward lacks that argument (transformers 5 renamed it `cache`).
    # Same test as peft's, done before anything is trained or written.
    backbone = getattr(model, model.base_model_prefix, model)
    if "past_key_values" not in inspect.signature(backbone.forward).parameters:
        raise ConfigError(
            f"method.name='prefix_tuning' for classification needs a backbone whose forward accepts "
            f"past_key_values; {type(backbone).__name__} ({model.config.model_type}) does not with the installed "
            "transformers/peft. Use prompt_tuning or lora for classification; prefix_tuning works for causal_lm"
        )
