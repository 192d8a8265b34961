"""Training throughput of finetune.train against a hand-written plain Trainer, the effect of dynamic
padding + length grouping against padding to max_length, and bf16 autocast against fp32 on this CPU.

    python benchmarks/throughput.py            # full: 5 runs per contender
    python benchmarks/throughput.py --quick    # a smaller check that it still works
    python benchmarks/throughput.py --sft      # SmolLM2 SFT on Dolly: packed vs padded vs plain Trainer
    python benchmarks/throughput.py --sft --sft-config recipes/configs/sst2_words_smollm2_lora.yaml --padded-only

--sft: SmolLM2-135M-Instruct LoRA on the Dolly open_qa rows of recipes/configs/dolly_smollm2_lora.yaml
(256 tokens, batch 8, 1 epoch): the plain Trainer (the same tokenized rows and LoRA model, transformers'
padding collator, random order), tunelab padded (the same), tunelab packed (data.packing), tunelab
grouped by length (the recipe's setting), in fp32, and padded and packed under bf16 autocast. The
"sft" section of the JSON holds the runs and packing_speedup_vs_padded_fp32 / _bf16 (median tokens/s
ratios). The plain Trainer computes logits at every position; tunelab only where a label is scored
(finetune/answer_logits.py), so on short answers (--sft-config of the sst2_words recipe: one-word answers)
the padded rows' ratio to the plain Trainer is mostly that saving. --padded-only keeps the plain Trainer
and tunelab padded (fp32, bf16); another --sft-config writes its section as "sft_<config name>".

Both contenders train the same model (offline all-MiniLM-L6-v2, LoRA) on the same SST-2 rows with the
same settings in fp32, measured in the same process, alternating order; "tunelab bf16" is the same
tunelab run under bf16 autocast (what training.mixed_precision: auto picks on a CPU with bf16
instructions). --batch-size sets every contender's batch (the recipe's 32; the untuned baseline's 8).
Tokens/s = non-padding training tokens seen / training-loop seconds (Trainer's train_runtime). Prints a
table and writes its section of benchmarks/throughput.json ("sst2_minilm_lora"; throughput_batchN.json
with --batch-size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune  # noqa: E402
from recipes.recipe import load_finetune_config  # noqa: E402

CONFIG = ROOT / "recipes" / "configs" / "sst2_minilm_lora.yaml"
SFT_CONFIG = ROOT / "recipes" / "configs" / "dolly_smollm2_lora.yaml"


def tunelab_run(overrides: list[str], out: Path, config_file: Path = CONFIG) -> dict:
    # fp32 unless the row asks otherwise: the plain Trainer it is compared with runs fp32.
    config = load_finetune_config(
        config_file, ["training.mixed_precision=no", *overrides, f"training.output_dir={out}"]
    )
    result = finetune.train(config)
    metric = "eval_accuracy" if config.model.task == "classification" else "eval_loss"
    return {
        "tokens_per_second": result.tokens_seen / result.train_seconds,
        "train_seconds": result.train_seconds,
        "accuracy" if metric == "eval_accuracy" else "validation_loss": result.final_metrics[metric],
    }


def plain_sft_trainer_run(overrides: list[str], out: Path, config_file: Path = SFT_CONFIG) -> dict:
    """A hand-written Trainer on the same tokenized rows and LoRA model: padding collator, random order."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from finetune.inputs import prepare_inputs
    from finetune.models import build_model, load_tokenizer, resolve_source

    config = load_finetune_config(config_file, overrides)
    t, m = config.training, config.method
    set_seed(t.seed)
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    inputs = prepare_inputs(config, tokenizer)
    model = build_model(config, source, tokenizer)
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules="all-linear",
    )
    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,
        per_device_train_batch_size=t.per_device_train_batch_size,
        num_train_epochs=t.num_train_epochs,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
    )
    trainer = Trainer(
        model=get_peft_model(model, lora),
        args=args,
        train_dataset=inputs.train,
        eval_dataset=inputs.validation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    output = trainer.train()
    seconds = output.metrics["train_runtime"]
    return {
        "tokens_per_second": trainer.state.num_input_tokens_seen / seconds,
        "train_seconds": seconds,
        "validation_loss": trainer.evaluate()["eval_loss"],
    }


def sft_main(runs: int, rows: int, config_file: Path = SFT_CONFIG, padded_only: bool = False) -> None:
    common = [
        f"data.max_train_samples={rows}",
        "data.max_eval_samples=32",
        "training.num_train_epochs=1",
        "training.eval_steps=100000",
        "training.logging_steps=1000",
        "training.train_split_metrics=false",
        "training.group_by_length=false",
    ]
    tunelab_rows = {
        "tunelab padded": [],
        "tunelab packed": ["data.packing=true"],
        "tunelab grouped by length": ["training.group_by_length=true"],
        "tunelab padded bf16": ["training.mixed_precision=bf16"],
        "tunelab packed bf16": ["data.packing=true", "training.mixed_precision=bf16"],
    }
    if padded_only:
        tunelab_rows = {name: tunelab_rows[name] for name in ("tunelab padded", "tunelab padded bf16")}
    results: dict[str, list[dict]] = {"plain Trainer": [], **{name: [] for name in tunelab_rows}}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(runs):
            names = list(results) if i % 2 == 0 else list(reversed(results))  # alternate the order
            for name in names:
                out = Path(scratch) / f"{name.replace(' ', '_')}{i}"
                if name == "plain Trainer":
                    results[name].append(plain_sft_trainer_run(common, out, config_file))
                else:
                    results[name].append(tunelab_run(common + tunelab_rows[name], out, config_file))
    base = median(results["plain Trainer"], "tokens_per_second")
    print(f"\n{config_file.name}, SmolLM2-135M-Instruct LoRA, {rows} rows, 1 epoch, batch 8, median of {runs} runs\n")
    print("| contender | tokens/s | train s | validation loss | tokens/s vs plain Trainer |")
    print("|---|---|---|---|---|")
    for name, items in results.items():
        tps = median(items, "tokens_per_second")
        print(
            f"| {name} | {tps:.0f} | {median(items, 'train_seconds'):.1f} | "
            f"{median(items, 'validation_loss'):.4f} | {tps / base:.3f} |"
        )
    section = "sft" if config_file == SFT_CONFIG else f"sft_{config_file.stem}"
    if padded_only:
        write_section(section, {"rows": rows, "runs": results})
        return
    speedup = {
        f"packing_speedup_vs_padded_{kind}": median(results[f"tunelab packed{suffix}"], "tokens_per_second")
        / median(results[f"tunelab padded{suffix}"], "tokens_per_second")
        for kind, suffix in (("fp32", ""), ("bf16", " bf16"))
    }
    print("\n" + ", ".join(f"{k}: {v:.2f}x" for k, v in speedup.items()))
    write_section(section, {"rows": rows, "runs": results, **speedup})


def write_section(section: str, content: dict) -> None:
    """benchmarks/throughput.json holds one section per benchmark; the others are kept."""
    path = ROOT / "benchmarks" / "throughput.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**saved, section: content}, indent=2))


def plain_trainer_run(overrides: list[str], out: Path) -> dict:
    """What a user writes by hand with transformers + peft, same settings as the tunelab config."""
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from finetune.data import load_splits
    from finetune.models import resolve_source

    config = load_finetune_config(CONFIG, overrides)
    t, d, m = config.training, config.data, config.method
    set_seed(t.seed)
    path = resolve_source(config.model).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=m.lora_r,
            lora_alpha=m.lora_alpha,
            lora_dropout=m.lora_dropout,
            target_modules="all-linear",
        ),
    )

    def encode(batch):
        out = tokenizer([s.strip() for s in batch["sentence"]], truncation=True, max_length=d.max_length)
        out["labels"] = [int(v) for v in batch["label"]]
        return out

    splits = load_splits(d)  # the same rows as tunelab (the seeded validation split included)
    train = splits.train
    train = train.map(encode, batched=True, remove_columns=train.column_names)
    validation = splits.validation.map(encode, batched=True, remove_columns=["sentence", "label"])

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,
        per_device_train_batch_size=t.per_device_train_batch_size,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        seed=t.seed,
        data_seed=t.seed,
        # The same work as finetune.train: evaluate at the end, keep the best checkpoint (model only).
        eval_strategy="epoch",
        save_strategy="epoch",
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=1,
        logging_steps=t.logging_steps,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        report_to="none",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    output = trainer.train()
    seconds = output.metrics["train_runtime"]
    return {
        "tokens_per_second": trainer.state.num_input_tokens_seen / seconds,
        "train_seconds": seconds,
        "accuracy": trainer.evaluate()["eval_accuracy"],
    }


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rows and runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--no-padding", action="store_true", help="skip the padded-to-max_length contender")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast contender")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch of every contender")
    parser.add_argument("--sft", action="store_true", help="SmolLM2 SFT on Dolly: packed vs padded (see above)")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 2000; --sft 64)")
    parser.add_argument("--sft-config", type=Path, default=SFT_CONFIG, help="--sft: the SmolLM2 config to train")
    parser.add_argument("--padded-only", action="store_true", help="--sft: plain Trainer and tunelab padded only")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    if args.sft:
        runs, rows = args.runs or (1 if args.quick else 3), args.rows or (16 if args.quick else 64)
        sft_main(runs, rows, args.sft_config.resolve(), args.padded_only)
        return
    rows = args.rows or (256 if args.quick else 2000)
    # One epoch, evaluation only at the end (eval_steps past the last step) so both loops do the same work.
    common = [
        f"data.max_train_samples={rows}",
        "training.num_train_epochs=1",
        "training.eval_steps=100000",
        "training.logging_steps=1000",
    ]
    if args.batch_size:
        common.append(f"training.per_device_train_batch_size={args.batch_size}")
    contenders = ("tunelab", "plain Trainer", "padded to max_length", "tunelab bf16")
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(runs):
            # Alternate the order so warm caches and thermal drift favour neither contender.
            order = ["tunelab", "plain Trainer"] if i % 2 == 0 else ["plain Trainer", "tunelab"]
            for name in order:
                out = Path(scratch) / f"{name.replace(' ', '_')}{i}"
                run = tunelab_run(common, out) if name == "tunelab" else plain_trainer_run(common, out)
                results[name].append(run)
            if not args.no_padding:
                padded = common + ["training.pad_to_max_length=true", "training.group_by_length=false"]
                results["padded to max_length"].append(tunelab_run(padded, Path(scratch) / f"pad{i}"))
            if not args.no_bf16:
                bf16 = common + ["training.mixed_precision=bf16"]
                results["tunelab bf16"].append(tunelab_run(bf16, Path(scratch) / f"bf16_{i}"))

    results = {name: items for name, items in results.items() if items}
    base = median(results["plain Trainer"], "tokens_per_second")
    padded = results.get("padded to max_length")
    padded_seconds = median(padded, "train_seconds") if padded else float("nan")
    batch = args.batch_size or "the recipe's"
    print(f"\nSST-2 MiniLM LoRA, {rows} rows, 1 epoch, batch {batch}, median of {runs} runs\n")
    print("| contender | tokens/s | train s | accuracy | tokens/s vs plain Trainer | speed-up vs padded |")
    print("|---|---|---|---|---|---|")
    for name, items in results.items():
        tps, seconds = median(items, "tokens_per_second"), median(items, "train_seconds")
        print(
            f"| {name} | {tps:.0f} | {seconds:.1f} | {median(items, 'accuracy'):.4f} | {tps / base:.3f} | "
            f"{f'{padded_seconds / seconds:.2f}x' if padded else '-'} |"
        )
    if args.batch_size:
        (ROOT / "benchmarks" / f"throughput_batch{args.batch_size}.json").write_text(json.dumps(results, indent=2))
    else:
        write_section("sst2_minilm_lora", results)


if __name__ == "__main__":
    main()
