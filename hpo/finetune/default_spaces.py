"""Method-aware default search spaces, centred on what fine-tuning projects ship (../shared/PRIORS.md).

Full fine-tuning learning rates sit ~10x below LoRA's, and IA3/prompt/prefix tuning ~10x above;
seeds are never searched. Each space also contains the untuned defaults' neighbourhood, so the
untuned run is a point the search can keep.
"""

from __future__ import annotations

from finetune.errors import ConfigError
from hpo.finetune.config_space import EFFECTIVE_BATCH_SIZE, LORA_ALPHA_MULTIPLIER
from hpo.space import Categorical, Float, Int, Parameter, SearchSpace

# What search.also_tune may add to the default space; none of it is searched unless asked for (keeps the
# default small: for AdamW fine-tunes beta1/beta2 rarely matter).
EXTRAS = ("optimizer", "head", "architecture")


def default_space(
    method: str, task: str, *, also_tune: tuple[str, ...] | list[str] = (), from_scratch: bool = False
) -> SearchSpace:
    """The method-aware space, plus the groups in ``also_tune`` (see EXTRAS).

    ``from_scratch`` (model.init: scratch): random weights train at ~10x a fine-tune's learning rate
    (small transformers from scratch: 1e-4 to 3e-3), so the full-fine-tuning range moves up."""
    unknown = set(also_tune) - set(EXTRAS)
    if unknown:
        raise ConfigError(f"search.also_tune: unknown group(s) {sorted(unknown)}; choose from {list(EXTRAS)}")
    space = _method_space(method, task)
    if from_scratch:
        space.parameters["training.learning_rate"] = Float(low=1e-4, high=3e-3, log=True)
    extra: dict[str, Parameter] = {}
    if "optimizer" in also_tune:
        extra["training.adam_beta1"] = Categorical(choices=(0.8, 0.9, 0.95), when={"training.optimizer": "adamw"})
        extra["training.adam_beta2"] = Categorical(choices=(0.98, 0.999), when={"training.optimizer": "adamw"})
        extra["training.momentum"] = Categorical(choices=(0.8, 0.9, 0.95), when={"training.optimizer": "sgd"})
    if "head" in also_tune:
        if task != "classification":
            raise ConfigError("search.also_tune: 'head' tunes a classification head; the task is not classification")
        mlp = {"method.head": "mlp"}
        extra["method.head"] = Categorical(choices=("linear", "mlp"))
        extra["method.head_layers"] = Int(low=1, high=3, when=mlp)
        extra["method.head_hidden_size"] = Categorical(choices=(128, 256, 512), when=mlp)
        extra["method.head_activation"] = Categorical(choices=("relu", "gelu", "tanh", "silu"), when=mlp)
        extra["method.head_dropout"] = Categorical(choices=(0.0, 0.1, 0.3), when=mlp)
    if "architecture" in also_tune:
        if method != "full":
            raise ConfigError("search.also_tune: 'architecture' trains from scratch (model.init: scratch, method full)")
        scratch = {"model.init": "scratch"}
        extra["model.num_hidden_layers"] = Int(low=1, high=4, when=scratch)
        extra["model.hidden_size"] = Categorical(choices=(64, 128, 256), when=scratch)
        extra["model.num_attention_heads"] = Categorical(choices=(2, 4, 8), when=scratch)
        extra["model.intermediate_size"] = Categorical(choices=(256, 512, 1024), when=scratch)
        extra["model.hidden_act"] = Categorical(choices=("gelu", "relu", "silu"), when=scratch)
    return SearchSpace({**space.parameters, **extra})


def _method_space(method: str, task: str) -> SearchSpace:
    epochs_high = 5 if task == "classification" else 3
    common: dict[str, Parameter] = {
        "training.lr_scheduler_type": Categorical(choices=("linear", "cosine")),
        "training.warmup_ratio": Categorical(choices=(0.0, 0.03, 0.1)),
        "training.num_train_epochs": Int(low=1, high=epochs_high),
    }
    if method == "full":
        return SearchSpace(
            {
                "training.learning_rate": Float(low=3e-6, high=1e-4, log=True),
                **common,
                EFFECTIVE_BATCH_SIZE: Categorical(choices=(8, 16, 32, 64)),
                "training.weight_decay": Categorical(choices=(0.0, 0.01, 0.1)),
            }
        )
    if method in ("lora", "dora") and task == "causal_lm":
        # Sub-1B LLMs want LoRA LRs of 1e-3..2e-3 in short runs (torchtune ships 2e-3 for Qwen2.5-0.5B),
        # above the field's 2e-4 mode; the LLM knobs: target set, rsLoRA scaling, NEFTune noise.
        return SearchSpace(
            {
                "training.learning_rate": Float(low=5e-5, high=3e-3, log=True),
                **common,
                EFFECTIVE_BATCH_SIZE: Categorical(choices=(8, 16, 32)),
                "training.weight_decay": Categorical(choices=(0.0, 0.01)),
                "method.lora_r": Categorical(choices=(8, 16, 32)),
                LORA_ALPHA_MULTIPLIER: Categorical(choices=(1, 2)),
                "method.use_rslora": Categorical(choices=(False, True)),
                "method.lora_dropout": Categorical(choices=(0.0, 0.05, 0.1)),
                # peft-default (q_proj and v_proj in Llamas) is the untuned run's: the space holds it.
                "method.target_modules": Categorical(choices=("all-linear", "attention", "peft-default")),
                "training.neftune_noise_alpha": Categorical(choices=(0.0, 5.0)),
            }
        )
    if method in ("lora", "dora"):
        return SearchSpace(
            {
                "training.learning_rate": Float(low=3e-5, high=2e-3, log=True),
                **common,
                EFFECTIVE_BATCH_SIZE: Categorical(choices=(8, 16, 32)),
                "training.weight_decay": Categorical(choices=(0.0, 0.01)),
                "method.lora_r": Categorical(choices=(8, 16, 32)),
                LORA_ALPHA_MULTIPLIER: Categorical(choices=(1, 2)),
                "method.lora_dropout": Categorical(choices=(0.0, 0.05, 0.1)),
            }
        )
    # ia3, prompt_tuning, prefix_tuning
    return SearchSpace(
        {
            "training.learning_rate": Float(low=1e-4, high=3e-2, log=True),
            **common,
            EFFECTIVE_BATCH_SIZE: Categorical(choices=(8, 16, 32)),
            "training.weight_decay": Categorical(choices=(0.0, 0.01, 0.1)),
        }
    )
