"""Method-aware default search spaces, centred on what fine-tuning projects ship (../shared/PRIORS.md).

Full fine-tuning learning rates sit ~10x below LoRA's, and IA3/prompt/prefix tuning ~10x above;
seeds are never searched. Each space also contains the untuned defaults' neighbourhood, so the
untuned run is a point the search can keep.
"""

from __future__ import annotations

from hpo.space import EFFECTIVE_BATCH_SIZE, LORA_ALPHA_MULTIPLIER, Categorical, Float, Int, Parameter, SearchSpace


def default_space(method: str, task: str) -> SearchSpace:
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
