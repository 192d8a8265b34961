"""Reload a saved run and evaluate it on a split."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from peft import PeftModel
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainingArguments,
    set_seed,
)

from finetune.answer_logits import answer_logits_collator
from finetune.architecture import install_head, load_head_weights
from finetune.config import ARCHITECTURE_KEYS, FinetuneConfig
from finetune.errors import ConfigError, DataError
from finetune.inputs import ModelInputs, prepare_inputs
from finetune.metrics import add_perplexity, classification_metrics
from finetune.models import ModelSource, build_model, load_model, load_tokenizer, resolve_source
from finetune.precision import precision_arguments
from finetune.shared_prefix import shared_prefix_for
from finetune.train import CONFIG_FILE, MODEL_DIR, clean_metrics
from finetune.trainer import FinetuneTrainer


def load_run_config(run_dir: str | Path) -> FinetuneConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a finished tunelab run: {CONFIG_FILE} is missing")
    return FinetuneConfig.from_yaml(path)


def load_trained(run_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, FinetuneConfig]:
    """The saved model (base + adapter, or the full fine-tuned model), its tokenizer and config."""
    config = load_run_config(run_dir)
    model_dir = Path(run_dir) / MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        base = build_model(config, resolve_source(config.model), tokenizer, config.data.label_names)
        model = PeftModel.from_pretrained(base, model_dir)  # the adapter holds the trained head
    else:
        # A fully fine-tuned model is saved whole (a from-scratch one in its searched shape, which its
        # config.json records): load it from the run, not from the base source.
        saved = dataclasses.replace(config.model, init="pretrained", **dict.fromkeys(ARCHITECTURE_KEYS))
        model = install_head(
            load_model(saved, ModelSource(str(model_dir)), tokenizer, config.data.label_names), config.method
        )
        if config.method.head == "mlp":
            load_head_weights(model, model_dir)
    model.eval()
    return model, tokenizer, config


def evaluate(
    run_dir: str | Path, split: str = "validation", batch_size: int | None = None, *, generate: bool = False
) -> dict[str, float]:
    """Metrics of a saved run on ``split`` ('validation' or 'test'), keys prefixed with the split name.

    ``generate`` (causal LMs): also greedy generations scored by exact match and token F1
    (finetune.generate), written to RUN_DIR/generations_<split>.jsonl."""
    _check_split(split)
    model, tokenizer, config = load_trained(run_dir)
    inputs = prepare_inputs(config, tokenizer)
    metrics = _evaluate_model(model, inputs, config, split, batch_size, where=str(run_dir))
    if generate:
        path = Path(run_dir) / f"generations_{split}.jsonl"
        metrics |= _generate(model, tokenizer, config, split, path, batch_size)
    return metrics


def evaluate_untrained(
    config: FinetuneConfig, split: str = "validation", *, generate: bool = False
) -> dict[str, float]:
    """Metrics of the model before fine-tuning (the pretrained base; for classification, a fresh head).
    With ``generate``, the generations go to <training.output_dir>/generations_<split>_untrained.jsonl."""
    _check_split(split)
    set_seed(config.training.seed)
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)  # once: the label names and the evaluated split
    model = build_model(config, source, tokenizer, inputs.label_names).eval()
    metrics = _evaluate_model(model, inputs, config, split, None, where="the config")
    if generate:
        path = Path(config.training.output_dir) / f"generations_{split}_untrained.jsonl"
        metrics |= _generate(model, tokenizer, config, split, path, None)
    return metrics


def _generate(
    model, tokenizer, config: FinetuneConfig, split: str, path: Path, batch_size: int | None
) -> dict[str, float]:
    from finetune.generate import generate_on_split, write_generations

    metrics, records = generate_on_split(model, tokenizer, config, split, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_generations(records, path)
    return metrics


def _check_split(split: str) -> None:
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"split must be one of train, validation, test; got {split!r}")


def _evaluate_model(
    model, inputs: ModelInputs, config: FinetuneConfig, split: str, batch_size: int | None, where: str
) -> dict[str, float]:
    dataset = getattr(inputs, split)
    if dataset is None:
        raise DataError(f"{where}: there is no {split} split (set data.{split}_file or data.{split}_size)")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = evaluation_trainer(model, config, inputs.collator, dataset, batch_size=batch_size, scratch=scratch)
        metrics = trainer.evaluate(dataset, metric_key_prefix=split)
    metrics = clean_metrics(metrics)
    return add_perplexity(metrics, config.model.task, prefix=split)


def evaluation_trainer(
    model, config: FinetuneConfig, collator, dataset, *, batch_size: int | None, scratch: str
) -> FinetuneTrainer:
    """A Trainer that only evaluates ``model`` as ``config`` says (batch, precision, metrics), on batches of
    ``dataset`` (a causal LM's logits at its labelled positions only); ``scratch``: its output folder."""
    if config.model.task == "causal_lm":
        collator = answer_logits_collator(model, collator, dataset)
    args = TrainingArguments(
        output_dir=scratch,
        per_device_eval_batch_size=batch_size or config.training.per_device_eval_batch_size,
        prediction_loss_only=config.model.task == "causal_lm",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        **precision_arguments(config.training.mixed_precision),
    )
    trainer = FinetuneTrainer(
        model=model,
        args=args,
        data_collator=collator,
        token_mean_loss=config.model.task == "causal_lm",
        prompt_prefix=config.model.task == "causal_lm" and shared_prefix_for(model, collator, dataset) is not None,
        compute_metrics=classification_metrics if config.model.task == "classification" else None,
    )
    trainer.remove_callback(PrinterCallback)  # keep stdout for the metrics the caller prints
    return trainer
