"""finetune.train(config) -> RunResult: one fine-tuning run with transformers.Trainer."""

from __future__ import annotations

import importlib.util
import json
import math
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from finetune.answer_logits import answer_logits_collator
from finetune.config import FinetuneConfig
from finetune.errors import ConfigError, TrainingError
from finetune.inputs import prepare_inputs
from finetune.methods import apply_method
from finetune.metrics import add_perplexity, classification_metrics, default_metric
from finetune.models import build_model, count_parameters, load_tokenizer, resolve_source
from finetune.packing import check_rows_kept_apart, packed_collator
from finetune.precision import precision_arguments, resolve_precision
from finetune.shared_prefix import shared_prefix_for
from finetune.timing import StageTimer
from finetune.train_metrics import TrainSplitMetrics
from finetune.trainer import FinetuneTrainer

CONFIG_FILE = "tunelab_config.yaml"
RESULT_FILE = "run_result.json"
MODEL_DIR = "model"
LOG_DIR = "logs"  # TensorBoard event files (training.report_to)
OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "adafactor": "adafactor"}  # TrainingArguments.optim


@dataclass
class RunResult:
    output_dir: str
    # One dict per evaluation: {"step", "epoch", "eval_loss", "eval_accuracy", ..., "train_loss",
    # "train_accuracy", ...}: validation metrics and the same metrics on a fixed training sample.
    evaluations: list[dict[str, float]]
    # Metrics of the kept (best) model on the validation split.
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_checkpoint: str | None
    optimizer_steps: int
    planned_steps: int
    tokens_seen: int
    wall_seconds: float  # loading, tokenizing, training and saving: the sum of time_breakdown
    train_seconds: float  # the training loop alone (Trainer's train_runtime, evaluations included)
    peak_memory_bytes: int
    trainable_params: int
    total_params: int
    stopped_early: bool = False
    # Training loss and learning rate at every logging step.
    train_losses: list[dict[str, float]] = field(default_factory=list)
    # Seconds per stage (finetune.timing.STAGES: setup, training, evaluation, checkpoints); they add up to
    # wall_seconds.
    time_breakdown: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        return cls(**json.loads(text))


class NanLossGuard(TrainerCallback):
    """Stop at the first NaN/inf training loss with a clear error instead of training on garbage."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            loss = (logs or {}).get(key)
            if loss is not None and not math.isfinite(loss):
                kind = "training" if key == "loss" else "validation"
                raise TrainingError(
                    f"{kind} loss is {loss} at step {state.global_step} "
                    f"(learning_rate={args.learning_rate}); lower training.learning_rate or check the data"
                )


class EvaluateAtSteps(TrainerCallback):
    """Evaluate and save after exactly the listed optimizer steps (training.eval_at_steps); Trainer's own
    step schedule never fires (NEVER_BY_INTERVAL) but still evaluates the last step."""

    def __init__(self, steps: list[int]):
        self.steps = frozenset(steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_evaluate = True
            control.should_save = True
        return control


# An evaluation interval no run reaches: with training.eval_at_steps, Trainer's step strategy (which keeps the
# best checkpoint and evaluates the last step) runs, and EvaluateAtSteps says when.
NEVER_BY_INTERVAL = 10**9


class ProgressLog(TrainerCallback):
    """One line per log/eval on stderr: step/total, loss or metrics, elapsed and ETA (stdout stays clean)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
        shown = {
            k: v
            for k, v in logs.items()
            if k in ("loss", "learning_rate") or k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
        }
        values = " ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
        print(
            f"[finetune] step {state.global_step}/{state.max_steps} {values} elapsed {elapsed:.0f}s eta {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


def training_arguments(config: FinetuneConfig, checkpoint_dir: Path) -> TrainingArguments:
    t = config.training
    metric, greater = default_metric(config.model.task)
    metric = t.metric_for_best_model or metric
    greater = greater if t.metric_for_best_model is None else "loss" not in metric
    strategy = "steps" if t.eval_steps or t.eval_at_steps else "epoch"
    interval = NEVER_BY_INTERVAL if t.eval_at_steps else t.eval_steps
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        # A float in [0, 1) is a ratio of the planned steps; an int >= 1 a number of steps.
        warmup_steps=t.warmup_steps or t.warmup_ratio,
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        max_grad_norm=t.max_grad_norm,
        neftune_noise_alpha=t.neftune_noise_alpha or None,
        optim=OPTIMIZERS[t.optimizer],
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        # transformers reads SGD's momentum and nesterov from optim_args ("key=value,...").
        optim_args=f"momentum={t.momentum},nesterov={t.nesterov}" if t.optimizer == "sgd" else None,
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy=strategy,
        eval_steps=interval,
        save_strategy=strategy,
        save_steps=interval,
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=greater,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the default hides NaN losses from the log; NanLossGuard needs them
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        **precision_arguments(t.mixed_precision),
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        disable_tqdm=t.disable_progress_bar,
        remove_unused_columns=False,  # inputs hold only model columns already
        prediction_loss_only=config.model.task == "causal_lm",
        # TensorBoard is added by _trainer with its log folder in the run folder (Trainer's default lies
        # under the checkpoints folder, which is deleted after training).
        report_to=[name for name in t.trackers if name != "tensorboard"] or "none",
        run_name=t.run_name or Path(t.output_dir).name,
        # Passed only when asked: the argument is deprecated in transformers 5 and warns otherwise.
        **({"gradient_checkpointing": True} if t.gradient_checkpointing else {}),
    )


def train(config: FinetuneConfig, callbacks: list[TrainerCallback] | None = None) -> RunResult:
    """Fine-tune as ``config`` says; save the best model, its config and the result in training.output_dir.

    Everything that can fail on bad input (model source, data, columns, labels) is checked before
    anything is written.
    """
    started = time.perf_counter()
    _check_trackers(config)
    # "auto" resolved once: the saved config says what ran, and evaluating it later runs the same.
    config = config.with_overrides({"training.mixed_precision": resolve_precision(config.training.mixed_precision)})
    set_seed(config.training.seed)  # new heads, dropout and peft init follow the seed
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    model = build_model(config, source, tokenizer, inputs.label_names)
    model = apply_method(model, config.method, config.model.task)
    if config.data.packing:
        check_rows_kept_apart(model, inputs.train, inputs.collator, model.config.model_type)
    if config.model.task == "causal_lm":
        inputs = replace(inputs, collator=answer_logits_collator(model, inputs.collator, inputs.train))
    train_collator = inputs.collator
    if config.data.packing:  # packed batches are checked on their own: the mask meets packed position_ids
        train_collator = packed_collator()
        if config.model.task == "causal_lm":
            train_collator = answer_logits_collator(model, train_collator, inputs.train)
    trainable, total = count_parameters(model)
    timer = StageTimer(started)
    trainer = _trainer(config, model, tokenizer, inputs, train_collator, [*(callbacks or []), timer])  # timer last
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_output = trainer.train()
    output_dir = Path(config.training.output_dir)
    result = _run_result(trainer, config, output_dir, train_output.metrics)
    result.trainable_params, result.total_params = trainable, total
    if trainer.is_world_process_zero():
        _save_run(trainer, config, inputs.label_names, result, output_dir, timer)
    else:
        result.time_breakdown = timer.finish()
        result.wall_seconds = sum(result.time_breakdown.values())
    trainer.accelerator.wait_for_everyone()
    return result


def _trainer(
    config: FinetuneConfig, model, tokenizer, inputs, train_collator, callbacks: list[TrainerCallback]
) -> Trainer:
    extra = _tracking_callbacks(config)
    if config.data.max_generation_samples:
        from finetune.generate import GenerationMetrics

        extra.append(GenerationMetrics(config, tokenizer))
    if config.training.eval_at_steps:
        extra.append(EvaluateAtSteps(config.training.eval_at_steps))
    # Checked on the validation split's rows (the model's ability to continue from a cache, whatever the split).
    prompt_prefix = (
        config.model.task == "causal_lm" and shared_prefix_for(model, inputs.collator, inputs.validation) is not None
    )
    if config.training.train_split_metrics:
        batch = config.training.per_device_eval_batch_size
        extra.append(
            TrainSplitMetrics(
                inputs.train,
                inputs.collator,
                batch,
                config.model.task,
                precision=config.training.mixed_precision,
                prompt_prefix=prompt_prefix,
            )
        )
    trainer = FinetuneTrainer(
        model=model,
        args=training_arguments(config, Path(config.training.output_dir) / "checkpoints"),
        train_dataset=inputs.train,
        eval_dataset=inputs.validation,
        processing_class=tokenizer,
        data_collator=train_collator,
        eval_collator=inputs.collator if config.data.packing else None,
        token_mean_loss=config.model.task == "causal_lm",
        prompt_prefix=prompt_prefix,
        compute_metrics=classification_metrics if config.model.task == "classification" else None,
        callbacks=[NanLossGuard(), ProgressLog(), *extra, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # replaced by ProgressLog on stderr
    return trainer


def _check_trackers(config: FinetuneConfig) -> None:
    for name in config.training.trackers:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"training.report_to: {name!r} is not installed: pip install {name} (TensorBoard: pip install "
                "'tunelab[tracking]')"
            )


def _tracking_callbacks(config: FinetuneConfig) -> list[TrainerCallback]:
    """TensorBoard's writer, logging to <output_dir>/logs (the other trackers are Trainer's own callbacks)."""
    if "tensorboard" not in config.training.trackers:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(Path(config.training.output_dir) / LOG_DIR)))]


def _run_result(trainer: Trainer, config: FinetuneConfig, output_dir: Path, train_metrics: dict) -> RunResult:
    """What the run did, read off the trainer after training (wall time and parameter counts filled by train)."""
    state = trainer.state
    evaluations = [
        add_perplexity(_eval_entry(log), config.model.task) for log in state.log_history if "eval_loss" in log
    ]
    # The best evaluation's checkpoint is the model loaded at the end: its validation metrics, already
    # logged, are the run's final metrics. Evaluating again only when no evaluation ran.
    metric_key = "eval_" + trainer.args.metric_for_best_model.removeprefix("eval_")
    best = _best(evaluations, metric_key, trainer.args.greater_is_better)
    if best is None:
        best = add_perplexity(clean_metrics(trainer.evaluate()), config.model.task)
    final = {k: v for k, v in best.items() if k.startswith("eval_")}
    return RunResult(
        output_dir=str(output_dir),
        evaluations=evaluations,
        final_metrics=final,
        best_metrics=best,
        best_checkpoint=str(output_dir / MODEL_DIR),
        optimizer_steps=state.global_step,
        planned_steps=state.max_steps,
        tokens_seen=int(state.num_input_tokens_seen),
        wall_seconds=0.0,
        train_seconds=float(train_metrics["train_runtime"]),
        peak_memory_bytes=_peak_memory(),
        trainable_params=0,
        total_params=0,
        stopped_early=state.global_step < state.max_steps,
        train_losses=[
            {"step": log["step"], "loss": log["loss"], "learning_rate": log.get("learning_rate")}
            for log in state.log_history
            if "loss" in log
        ],
    )


def _save_run(
    trainer: Trainer,
    config: FinetuneConfig,
    label_names: list[str] | None,
    result: RunResult,
    output_dir: Path,
    timer: StageTimer,
) -> None:
    trainer.save_model(str(output_dir / MODEL_DIR))  # adapter (+ trained head) or the full model
    saved = config.with_overrides({"data.label_names": label_names}) if label_names else config
    saved.to_yaml(output_dir / CONFIG_FILE)
    if config.method.save_merged:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(output_dir / "merged")
        trainer.processing_class.save_pretrained(output_dir / "merged")
    # Only the kept model stays on disk: intermediate checkpoints would grow with every trial.
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    result.time_breakdown = timer.finish()
    result.wall_seconds = sum(result.time_breakdown.values())
    (output_dir / RESULT_FILE).write_text(result.to_json())


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Keep the model's metrics; drop timing fields (runtime, samples per second) and bookkeeping."""
    timing = ("_runtime", "_per_second", "_preparation_time")
    return {k: v for k, v in metrics.items() if "_" in k and not k.endswith(timing) and k != "num_input_tokens_seen"}


def _eval_entry(log: dict[str, Any]) -> dict[str, float]:
    # Validation metrics (eval_*) and the training sample's (train_*, see finetune.train_metrics).
    entry = {k: v for k, v in clean_metrics(log).items() if k.startswith(("eval_", "train_"))}
    entry["step"] = log["step"]
    entry["epoch"] = log.get("epoch", 0.0)
    return entry


def _best(evaluations: list[dict[str, float]], key: str, greater: bool) -> dict[str, float] | None:
    scored = [e for e in evaluations if key in e]
    if not scored:
        return None
    return (max if greater else min)(scored, key=lambda e: e[key])


def _peak_memory() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def planned_steps(config: FinetuneConfig, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps Trainer will plan for ``config`` on ``train_rows`` rows (same arithmetic as Trainer)."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    batches = math.ceil(train_rows / (t.per_device_train_batch_size * world_size))
    per_epoch = max(math.ceil(batches / t.gradient_accumulation_steps), 1)
    return math.ceil(t.num_train_epochs * per_epoch)


def process_state():
    """accelerate's process state, set up as Trainer sets it up (gloo on CPU-only machines).

    A bare PartialState() on a CPU machine reports a single process even under
    `accelerate launch --multi_gpu`; asking for the CPU backend gives the real rank and world size.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def end_processes() -> None:
    """Under a multi-process launch: wait for every process, then close the process group, so no process
    exits while another still talks to it (gloo then aborts with "terminate called ...")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
