import json

import pandas as pd
import pytest

from finetune import DataError
from finetune.config import DataConfig
from finetune.data import load_splits, read_table

ROWS = [{"text": f"row {i}", "label": "a" if i % 2 else "b"} for i in range(20)]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_read_each_file_type(tmp_path, suffix):
    path = tmp_path / f"d.{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_parquet(path)
    dataset = read_table(path)
    assert len(dataset) == 20 and dataset[3]["text"] == "row 3" and str(dataset[3]["label"]) == "a"


def test_tsv_keeps_quotes_and_na_verbatim(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\n\" it 's NA , not a quote\t1\nNA\t0\n")
    dataset = read_table(path)
    assert dataset["sentence"] == ["\" it 's NA , not a quote", "NA"]


def test_seeded_split_is_deterministic_and_disjoint(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    data = DataConfig(train_file=str(path), validation_size=0.25, test_size=4, split_seed=7)
    first, second = load_splits(data), load_splits(data)
    assert first.validation["text"] == second.validation["text"] and first.test["text"] == second.test["text"]
    assert (len(first.train), len(first.validation), len(first.test)) == (12, 4, 4)
    texts = [set(s["text"]) for s in (first.train, first.validation, first.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    other = load_splits(DataConfig(train_file=str(path), validation_size=0.25, test_size=4, split_seed=8))
    assert other.test["text"] != first.test["text"]


def test_validation_split_seed_redraws_validation_and_never_touches_test(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    base = load_splits(DataConfig(train_file=str(path), validation_size=0.25, test_size=4, split_seed=7))
    redrawn = [
        load_splits(
            DataConfig(train_file=str(path), validation_size=0.25, test_size=4, split_seed=7, validation_split_seed=s)
        )
        for s in (100, 101)
    ]
    for splits in redrawn:
        assert splits.test["text"] == base.test["text"]
        assert not set(splits.test["text"]) & (set(splits.train["text"]) | set(splits.validation["text"]))
    assert redrawn[0].validation["text"] != redrawn[1].validation["text"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*missing.jsonl"):
        load_splits(DataConfig(train_file=str(tmp_path / "missing.jsonl")))


def test_unsupported_suffix(tmp_path):
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        read_table(tmp_path / "d.xml")


def test_empty_file(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(DataError, match="d.jsonl: the file has no rows"):
        read_table(tmp_path / "d.jsonl")
    (tmp_path / "e.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="e.csv: the file has no rows"):
        read_table(tmp_path / "e.csv")


def test_invalid_jsonl_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match="d.jsonl, line 2: invalid JSON"):
        read_table(tmp_path / "d.jsonl")


def test_split_too_large(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    with pytest.raises(DataError, match="data.validation_size=50 leaves no rows"):
        load_splits(DataConfig(train_file=str(path), validation_size=50))
