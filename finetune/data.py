"""Load raw train/validation/test splits from local files or the Hub, with seeded splits when needed."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from datasets import Dataset, concatenate_datasets

from finetune.config import DataConfig
from finetune.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


@dataclass
class RawSplits:
    train: Dataset
    validation: Dataset
    test: Dataset | None
    # Where each split came from, for error messages ("train (data/train.jsonl)").
    origins: dict[str, str]


def read_table(path: str | Path) -> Dataset:
    """Read a local jsonl/json/csv/tsv/parquet file into a Dataset; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {number}: invalid JSON: {exc.msg}") from exc
        return _from_rows(rows, path)
    if suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON: {exc}") from exc
        if isinstance(content, dict) and isinstance(content.get("data"), list):
            content = content["data"]
        if not isinstance(content, list):
            raise DataError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        return _from_rows(content, path)
    if suffix == ".parquet":
        return _from_frame(pd.read_parquet(path), path)
    # Text is read verbatim: no quote handling (SST-2 style TSV) and no "NA" -> NaN guessing.
    sep = "\t" if suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(path, sep=sep, quoting=quoting, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse as {suffix[1:]}: {exc}") from exc
    return _from_frame(frame, path)


def load_splits(data: DataConfig) -> RawSplits:
    """Train, validation and (optional) test splits; missing ones are carved from train with split_seed."""
    origins = {}
    hub_splits = _load_hub(data) if data.dataset else {}
    train = read_table(data.train_file) if data.train_file else hub_splits.get("train")
    if train is None:
        raise DataError(f"data.dataset={data.dataset!r} has no 'train' split")
    origins["train"] = data.train_file or f"{data.dataset}[train]"
    validation = _given_split(data.validation_file, hub_splits, "validation", origins)
    test = _given_split(data.test_file, hub_splits, "test", origins)

    # Carve held-out splits from train deterministically: split_seed, never the training seed,
    # so replicate seeds see the same data.
    if test is None and data.test_size > 0:
        train, test = _split(train, data.test_size, data.split_seed, "data.test_size")
        origins["test"] = f"{origins['train']} (seeded split, data.test_size={data.test_size})"
    if data.cv_folds is not None:
        # Cross-validation: every labelled row that is not test goes into the folds.
        pool = train if validation is None else concatenate_datasets([train, validation])
        seed = data.split_seed + 1 if data.validation_split_seed is None else data.validation_split_seed
        train, validation = cv_split(pool, data.cv_folds, data.cv_fold, seed, data.label_column)
        origins["validation"] = f"{origins['train']} (fold {data.cv_fold} of {data.cv_folds}, seed {seed})"
    elif validation is None:
        if data.validation_size <= 0:
            raise DataError("no validation split: give data.validation_file or data.validation_size > 0")
        seed = data.split_seed + 1 if data.validation_split_seed is None else data.validation_split_seed
        train, validation = _split(train, data.validation_size, seed, "data.validation_size")
        origins["validation"] = f"{origins['train']} (seeded split, data.validation_size={data.validation_size})"

    if data.max_train_samples is not None and len(train) > data.max_train_samples:
        train = train.select(range(data.max_train_samples))
    if data.max_eval_samples is not None:
        validation = validation.select(range(min(len(validation), data.max_eval_samples)))
        if test is not None:
            test = test.select(range(min(len(test), data.max_eval_samples)))
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None and len(split) == 0:
            raise DataError(f"the {name} split is empty ({origins[name]})")
    return RawSplits(train=train, validation=validation, test=test, origins=origins)


def fold_assignment(labels: list, folds: int, seed: int) -> list[int]:
    """Each row's fold: rows of each label shuffled with ``seed`` and dealt round-robin, so every fold has
    the label proportions of the whole (to within one row per label) and the same seed gives the same folds."""
    rng = random.Random(seed)
    assignment = [0] * len(labels)
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(str(label), []).append(index)
    dealt = 0
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        for row in rows:
            assignment[row] = dealt % folds
            dealt += 1
    return assignment


def cv_split(pool: Dataset, folds: int, fold: int, seed: int, label_column: str) -> tuple[Dataset, Dataset]:
    """(train, validation) for fold ``fold`` of ``folds``: stratified by ``label_column`` when the data have it."""
    if len(pool) < 2 * folds:
        raise DataError(f"data.cv_folds={folds} needs at least {2 * folds} labelled rows; there are {len(pool)}")
    labels = pool[label_column] if label_column in pool.column_names else [0] * len(pool)
    assignment = fold_assignment(labels, folds, seed)
    held_out = [i for i, f in enumerate(assignment) if f == fold]
    kept = [i for i, f in enumerate(assignment) if f != fold]
    return pool.select(kept), pool.select(held_out)


def _given_split(path: str | None, hub_splits: dict, name: str, origins: dict) -> Dataset | None:
    if path:
        origins[name] = path
        return read_table(path)
    if name in hub_splits:
        origins[name] = f"hub[{name}]"
        return hub_splits[name]
    return None


def _split(dataset: Dataset, size: float, seed: int, key: str) -> tuple[Dataset, Dataset]:
    count = int(size) if size >= 1 else int(round(size * len(dataset)))
    if count <= 0 or count >= len(dataset):
        raise DataError(f"{key}={size} leaves no rows on one side of a {len(dataset)}-row train split")
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _load_hub(data: DataConfig) -> dict[str, Dataset]:
    from datasets import load_dataset

    try:
        loaded = load_dataset(data.dataset, data.dataset_config)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise DataError(f"data.dataset={data.dataset!r}: cannot load it from the Hub: {exc}") from exc
    return dict(loaded)


def _from_rows(rows: list, path: Path) -> Dataset:
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: every record must be a JSON object")
    return Dataset.from_list(rows)


def _from_frame(frame: pd.DataFrame, path: Path) -> Dataset:
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    return Dataset.from_pandas(frame, preserve_index=False)
