"""FinetuneConfig: one fine-tuning run, in four sections (model, data, method, training).

Loaded from YAML or a dict, with ``section.key=value`` overrides. Every key is checked:
unknown keys, wrong types and impossible values raise ConfigError naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from finetune.config_checks import check_packing, check_section, parse_override_value
from finetune.errors import ConfigError

Task = Literal["classification", "causal_lm"]
MethodName = Literal["full", "lora", "dora", "ia3", "prompt_tuning", "prefix_tuning"]
TARGET_MODULE_PRESETS = ("auto", "all-linear", "attention", "peft-default")
TRACKERS = ("tensorboard", "mlflow", "trackio", "wandb")  # training.report_to: what transformers reports to
SftFormat = Literal["auto", "text", "prompt_completion", "messages", "instruction"]
# ModelConfig fields that reshape a from-scratch model (hidden_act included).
ARCHITECTURE_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "hidden_act")


@dataclass
class ModelConfig:
    # Hub id, local folder, or a packaged offline model (see finetune.models.PACKAGED_MODELS).
    name: str = ""
    task: Task = "classification"
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    # "scratch": random weights in the named model's architecture (its tokenizer and config), with the
    # shape fields below replacing the config's (null: keep the model's own). Full fine-tuning only.
    init: Literal["pretrained", "scratch"] = "pretrained"
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    hidden_act: Literal["gelu", "relu", "silu", "tanh", "gelu_new"] | None = None

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("model.name is required: a Hub id, a local folder or a packaged model name")
        shape = {key: getattr(self, key) for key in ARCHITECTURE_KEYS if getattr(self, key) is not None}
        if shape and self.init != "scratch":
            raise ConfigError(
                f"model.{sorted(shape)[0]} changes the architecture, which pretrained weights cannot follow; "
                "set model.init: scratch to train that architecture from random weights"
            )
        for key, value in shape.items():
            if key != "hidden_act" and value <= 0:
                raise ConfigError(f"model.{key} must be > 0, got {value}")
        if self.hidden_size and self.num_attention_heads and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.num_attention_heads={self.num_attention_heads} must divide model.hidden_size={self.hidden_size}"
            )


@dataclass
class DataConfig:
    # Local files (jsonl, json, csv, tsv, parquet); relative paths resolve against the YAML's folder.
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    # Or a Hub dataset (needs a network).
    dataset: str | None = None
    dataset_config: str | None = None
    # Classification columns.
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # Ordered label values as they appear in the data (compared as strings); default: sorted from train.
    label_names: list[str] | None = None
    # Causal-LM SFT format and its columns: canonical name -> column in the file.
    format: SftFormat = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    completion_only_loss: bool = True
    # prompt_completion and instruction rows through the tokenizer's chat template when it has one (the
    # prompt as the user turn, the answer as the assistant turn), as an instruct model was trained to read
    # them; false: the raw prompt + completion (instruction rows: the Alpaca prompt). messages rows always
    # use the template.
    chat_template: bool = True
    # Seeded splits when a file for a split is not given (fraction of train, or a row count >= 1).
    validation_size: float = 0.1
    test_size: float = 0.0
    split_seed: int = 0
    # Re-draws only the validation split (the test split stays put); default split_seed + 1.
    validation_split_seed: int | None = None
    max_length: int = 128
    # Causal LMs: train on padding-free batches (each batch's rows end to end in one row, attention kept
    # within each; finetune.packing). Evaluation batches stay padded.
    packing: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # Generation (tunelab evaluate --generate): a regex whose first group is the answer in references and
    # generations alike (e.g. "#### (\\S+)"; null: the whole text), and the longest continuation in tokens.
    answer_pattern: str | None = None
    max_new_tokens: int = 64
    # Causal LMs: also generate on the first N validation rows at each evaluation and log eval_exact_match
    # and eval_token_f1 (a search objective or training.metric_for_best_model); null: loss only.
    max_generation_samples: int | None = None
    # Prompts answered per generate() call (null: training.per_device_eval_batch_size). Generation keeps only
    # the last position's logits and a KV cache, where evaluation keeps every position's logits: a larger batch
    # fits where the evaluation batch does, and takes fewer decoding steps.
    generation_batch_size: int | None = None
    # k-fold cross-validation: the labelled rows that are not test (train + validation) are dealt into
    # cv_folds stratified folds with validation_split_seed; fold cv_fold is the validation split.
    cv_folds: int | None = None
    cv_fold: int | None = None

    def validate(self) -> None:
        if not self.train_file and not self.dataset:
            raise ConfigError("data.train_file or data.dataset is required")
        if self.cv_folds is not None and self.cv_folds < 2:
            raise ConfigError(f"data.cv_folds must be >= 2 (or null: no cross-validation), got {self.cv_folds}")
        if (self.cv_folds is None) != (self.cv_fold is None):
            raise ConfigError("data.cv_folds and data.cv_fold go together: set both (a fold of k) or neither")
        if self.cv_folds is not None and not 0 <= self.cv_fold < self.cv_folds:
            raise ConfigError(f"data.cv_fold must be in [0, {self.cv_folds}), got {self.cv_fold}")
        if self.max_length <= 0:
            raise ConfigError(f"data.max_length must be > 0, got {self.max_length}")
        for key in ("validation_size", "test_size"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"data.{key} must be >= 0 (a fraction < 1 or a row count), got {value}")
        for key in ("max_train_samples", "max_eval_samples", "max_generation_samples", "generation_batch_size"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"data.{key} must be > 0 or null, got {value}")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"data.max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.answer_pattern is not None:
            try:
                re.compile(self.answer_pattern)
            except re.error as exc:
                message = f"data.answer_pattern: {self.answer_pattern!r} is not a regular expression: {exc}"
                raise ConfigError(message) from exc
        allowed = {"text", "prompt", "completion", "messages", "instruction", "input", "output"}
        unknown = set(self.columns) - allowed
        if unknown:
            raise ConfigError(f"data.columns has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


@dataclass
class MethodConfig:
    name: MethodName = "lora"
    # target_modules: "auto" (LoRA/DoRA: all linear layers; IA3: peft's per-architecture list),
    # "all-linear", "attention" (LoRA/DoRA: the attention blocks' linear layers only), "peft-default"
    # (peft's per-architecture list) or a list of module names.
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    target_modules: str | list[str] = "auto"
    # Prompt / prefix tuning.
    num_virtual_tokens: int = 20
    # Save base + adapter merged into one model folder too (LoRA/DoRA/IA3).
    save_merged: bool = False
    # Classification head: "linear" (the model's own) or an MLP of head_layers hidden layers of
    # head_hidden_size units in place of the model's last linear layer. Trained and saved with every method.
    head: Literal["linear", "mlp"] = "linear"
    head_layers: int = 1
    head_hidden_size: int = 256
    head_activation: Literal["relu", "gelu", "tanh", "silu"] = "gelu"
    head_dropout: float = 0.1

    def validate(self) -> None:
        if self.head_layers <= 0:
            raise ConfigError(f"method.head_layers must be > 0 (hidden layers of the MLP head), got {self.head_layers}")
        if self.head_hidden_size <= 0:
            raise ConfigError(f"method.head_hidden_size must be > 0, got {self.head_hidden_size}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"method.head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.lora_r <= 0:
            raise ConfigError(f"method.lora_r must be > 0, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"method.num_virtual_tokens must be > 0, got {self.num_virtual_tokens}")
        if isinstance(self.target_modules, str) and self.target_modules not in TARGET_MODULE_PRESETS:
            raise ConfigError(
                f"method.target_modules must be a list of module names or one of {TARGET_MODULE_PRESETS}, "
                f"got {self.target_modules!r}"
            )
        if self.save_merged and self.name not in ("lora", "dora", "ia3"):
            raise ConfigError(f"method.save_merged needs method.name in lora, dora, ia3; got {self.name!r}")


@dataclass
class TrainingConfig:
    output_dir: str = "runs/finetune"
    # Defaults are transformers' TrainingArguments defaults: the "untuned" run a user would launch.
    learning_rate: float = 5e-5
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
    ] = "linear"
    warmup_ratio: float = 0.0
    # > 0: warm up over this many optimizer steps, overriding warmup_ratio (torchtune's configs give steps).
    warmup_steps: int = 0
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # null: 32 for classification, 8 for causal LMs, whose evaluation memory is the batch's logits over the
    # vocabulary (SmolLM2, 112 tokens: 0.7 GB per copy at 32 rows; a run's peak RSS 5.4 GB at 32, 3.6 at 8).
    per_device_eval_batch_size: int | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    max_grad_norm: float = 1.0
    # NEFTune: uniform noise of this scale on the input embeddings while training (0: off; the paper's
    # values are 5 to 15). Evaluation and generation see clean embeddings.
    neftune_noise_alpha: float = 0.0
    # Optimizer: adamw (TrainingArguments' default), sgd (momentum, nesterov) or adafactor.
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    seed: int = 42
    # Evaluate every eval_steps optimizer steps (null: at the end of every epoch).
    eval_steps: int | None = None
    # Or evaluate after exactly these optimizer steps and at the last one (a search evaluates only where its
    # scheduler compares trials: hpo's search.evaluate_at: rungs). The kept checkpoint is the best of them.
    eval_at_steps: list[int] | None = None
    logging_steps: int = 50
    # Also measure the metrics on a fixed 256-row training sample at each evaluation (the report's
    # train-vs-validation plot). Costs ~30% of a LoRA run evaluated 9 times; search trials turn it off.
    train_split_metrics: bool = True
    # Metric that picks the kept checkpoint (default: accuracy for classification, loss for causal LM).
    metric_for_best_model: str | None = None
    group_by_length: bool = False
    pad_to_max_length: bool = False
    # auto: bf16 autocast where the hardware runs it natively (CUDA bf16, or a CPU with AVX512-BF16/AMX),
    # fp32 elsewhere (finetune.precision); the run's saved config records what it resolved to.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    disable_progress_bar: bool = True
    # Experiment tracking through transformers' integrations: "none", or any of TRACKERS. TensorBoard writes
    # to <output_dir>/logs; the others log where their own settings (environment variables) say.
    report_to: str | list[str] = "none"
    # The run's name in the tracker (null: the output folder's name); searches name trials trial_0007.
    run_name: str | None = None

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"training.warmup_steps must be >= 0 (0: use warmup_ratio), got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ConfigError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.neftune_noise_alpha < 0:
            raise ConfigError(f"training.neftune_noise_alpha must be >= 0 (0: off), got {self.neftune_noise_alpha}")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"training.{key} must be > 0, got {getattr(self, key)}")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("training.num_train_epochs must be > 0 (or set training.max_steps > 0)")
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise ConfigError(f"training.eval_steps must be > 0 or null, got {self.eval_steps}")
        if self.eval_at_steps is not None:
            steps = self.eval_at_steps
            valid = isinstance(steps, (list, tuple)) and all(
                isinstance(step, int) and not isinstance(step, bool) for step in steps
            )
            if not valid or not steps or steps[0] < 1 or list(steps) != sorted(set(steps)):
                raise ConfigError(
                    f"training.eval_at_steps: expected a non-empty, increasing list of optimizer steps >= 1 or null, "
                    f"got {steps!r}"
                )
            if self.eval_steps is not None:
                raise ConfigError("training.eval_at_steps and training.eval_steps both say when to evaluate: set one")
        if self.logging_steps <= 0:
            raise ConfigError(f"training.logging_steps must be > 0, got {self.logging_steps}")
        for key in ("adam_beta1", "adam_beta2", "momentum"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"training.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.adam_epsilon <= 0:
            raise ConfigError(f"training.adam_epsilon must be > 0, got {self.adam_epsilon}")
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            raise ConfigError(
                f"training.momentum and training.nesterov apply to optimizer 'sgd', not {self.optimizer!r} "
                "(AdamW's momentum is training.adam_beta1)"
            )
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("training.nesterov needs training.momentum > 0 (PyTorch's SGD rule)")
        if any(name not in TRACKERS for name in self.trackers):
            raise ConfigError(
                f"training.report_to: expected 'none' or a list drawn from {TRACKERS}, got {self.report_to!r}"
            )

    @property
    def trackers(self) -> list[str]:
        """The trackers training.report_to names ([] for "none")."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [name for name in names if name != "none"]

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "training": TrainingConfig,
}


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, base_dir: str | Path | None = None) -> FinetuneConfig:
        """Build and validate a config. ``base_dir`` resolves relative data paths (the YAML's folder)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of sections {sorted(SECTIONS)}, got {type(raw).__name__}")
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; allowed: {sorted(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
            sections[name] = section_cls(**check_section(name, section_cls, values))
        config = cls(**sections)
        if config.training.per_device_eval_batch_size is None:
            config.training.per_device_eval_batch_size = 32 if config.model.task == "classification" else 8
        if base_dir is not None:
            config.data = _resolve_paths(config.data, Path(base_dir))
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> FinetuneConfig:
        raw = load_yaml(path)
        raw = apply_overrides(raw, overrides or [])
        return cls.from_dict(raw, base_dir=Path(path).parent)

    def validate(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate()
        if self.model.init == "scratch" and self.method.name != "full":
            raise ConfigError(
                f"model.init='scratch' trains every weight from random values: it needs method.name='full', "
                f"got {self.method.name!r}"
            )
        if self.method.head == "mlp" and self.model.task != "classification":
            raise ConfigError("method.head='mlp' replaces a classification head: it needs model.task='classification'")
        if self.data.max_generation_samples and self.model.task != "causal_lm":
            raise ConfigError("data.max_generation_samples scores generated answers: it needs model.task='causal_lm'")
        if self.data.packing:
            check_packing(self.model.task, self.method.name, self.training.pad_to_max_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> FinetuneConfig:
        """A new validated config with dotted keys replaced, e.g. {"training.learning_rate": 1e-4}."""
        raw = copy.deepcopy(self.to_dict())
        for dotted, value in overrides.items():
            _set_dotted(raw, dotted, value)
        return FinetuneConfig.from_dict(raw)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are parsed as YAML scalars (typed later)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, text = item.split("=", 1)
        _set_dotted(raw, dotted.strip(), parse_override_value(text))
    return raw


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"key {dotted!r} must be section.key with section in {sorted(SECTIONS)}")
    section, key = parts
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {dotted!r}; allowed: {sorted(SECTIONS)}")
    allowed = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if key not in allowed:
        raise ConfigError(f"unknown key {dotted!r}; allowed keys in {section!r}: {sorted(allowed)}")
    raw.setdefault(section, {})
    if raw[section] is None:
        raw[section] = {}
    raw[section][key] = value


def _resolve_paths(data: DataConfig, base_dir: Path) -> DataConfig:
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(data, key)
        if value and not Path(value).is_absolute():
            setattr(data, key, str((base_dir / value).resolve()))
    return data
