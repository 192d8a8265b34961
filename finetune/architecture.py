"""The model's shape: an MLP classification head in place of the linear one, and from-scratch configs.

The head replaces the model's last linear layer (``classifier`` in BERT-like models, ``score`` in
decoder models), keeping what comes before it (BERT's pooler and dropout). peft's classification task
already trains and saves a module by those names, so the MLP travels with LoRA/IA3/prompt adapters; a
fully fine-tuned model saves it in its weights and load_head_weights puts it back.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from finetune.config import ARCHITECTURE_KEYS, MethodConfig, ModelConfig
from finetune.errors import ConfigError, ModelError

# Where transformers' sequence-classification models keep their head (same names as peft's SEQ_CLS).
HEAD_NAMES = ("classifier", "score")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def head_name(model: nn.Module) -> str:
    """The attribute holding the classification head; a clear error for heads we cannot replace."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return name
        if head is not None:
            raise ConfigError(
                f"method.head='mlp' replaces a linear classification head; {type(model).__name__}.{name} is a "
                f"{type(head).__name__}. Use method.head='linear' with this model"
            )
    raise ConfigError(f"method.head='mlp': {type(model).__name__} has no linear head named {' or '.join(HEAD_NAMES)}")


def mlp_head(in_features: int, out_features: int, method: MethodConfig) -> nn.Sequential:
    """head_layers x (Linear, activation, dropout), then the Linear to the labels."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(method.head_layers):
        layers += [nn.Linear(width, method.head_hidden_size), ACTIVATIONS[method.head_activation]()]
        layers.append(nn.Dropout(method.head_dropout))
        width = method.head_hidden_size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def install_head(model: PreTrainedModel, method: MethodConfig) -> PreTrainedModel:
    """Replace the linear head by the MLP ``method`` describes (no change for method.head='linear')."""
    if method.head != "mlp":
        return model
    name = head_name(model)
    linear: nn.Linear = getattr(model, name)
    head = mlp_head(linear.in_features, linear.out_features, method)
    setattr(model, name, head.to(dtype=linear.weight.dtype, device=linear.weight.device))
    return model


def load_head_weights(model: PreTrainedModel, model_dir: str | Path) -> None:
    """Put a saved full model's MLP head back (from_pretrained built the linear head and skipped it)."""
    from safetensors.torch import load_file

    name = head_name_after_install(model)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir}: no .safetensors weights to read the MLP head from")
    state = {}
    for file in files:
        state.update({k[len(name) + 1 :]: v for k, v in load_file(str(file)).items() if k.startswith(f"{name}.")})
    head = getattr(model, name)
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{model_dir}: the saved head does not match method.head's shape (missing {missing}, unexpected "
            f"{unexpected}); was the run's config edited after training?"
        )


def head_name_after_install(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Sequential):
            return name
    raise ModelError(f"{type(model).__name__} has no MLP head to load weights into")


def linear_layers_outside_head(model: nn.Module) -> list[str]:
    """Full names of the linear layers LoRA may target when the head is an MLP: the head is trained whole."""
    names = []
    for name, module in model.named_modules():
        top = name.split(".", 1)[0]
        if isinstance(module, nn.Linear) and top not in HEAD_NAMES:
            names.append(name)
    return names


def attention_linear_layers(model: nn.Module) -> list[str]:
    """Full names of the linear layers inside attention blocks (LoRA's attention-only target set).

    A module is in an attention block when a component of its name contains "attn" or "attention"
    (Llama's self_attn.q_proj, BERT's attention.self.query and attention.output.dense). Full names,
    because peft matches a short name like "dense" in every block that has one."""
    names = []
    for name, module in model.named_modules():
        parts = name.lower().split(".")
        if isinstance(module, nn.Linear) and parts[0] not in HEAD_NAMES:
            if any("attn" in part or "attention" in part for part in parts[:-1]):
                names.append(name)
    if not names:
        raise ConfigError(
            f"method.target_modules='attention': {type(model).__name__} has no linear layer inside a module named "
            "*attn* or *attention*; use 'all-linear' or list the module names"
        )
    return names


def scratch_config(model: ModelConfig, config: PretrainedConfig) -> PretrainedConfig:
    """The named model's config with the searched shape fields replaced; errors name the field."""
    for key in ARCHITECTURE_KEYS:
        value = getattr(model, key)
        if value is None:
            continue
        if not hasattr(config, key):
            raise ConfigError(f"model.{key}: the {config.model_type} config has no field {key!r}")
        setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"model.num_attention_heads={config.num_attention_heads} must divide "
            f"model.hidden_size={config.hidden_size} (the {config.model_type} config's value where not set)"
        )
    for key in ("head_dim", "attention_head_size"):  # derived in some configs; recompute
        if getattr(config, key, None) is not None:
            setattr(config, key, config.hidden_size // config.num_attention_heads)
    return config
