"""Turn raw rows into model inputs: classification labels, SFT formats and completion-only loss masks."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from finetune.config import DataConfig
from finetune.errors import DataError

IGNORE_INDEX = -100
# Alpaca-style prompt, used for the instruction format when the tokenizer has no chat template.
ALPACA_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "text": ("text",),
}


# ---------------------------------------------------------------- classification


def label_names_from(train: Dataset, data: DataConfig) -> list[str]:
    if data.label_names:
        return list(data.label_names)
    values = {str(value) for value in train[data.label_column]}
    # Numeric labels sort as numbers (2 before 10), names alphabetically.
    return sorted(values, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v))


def require_labels(split: Dataset, split_name: str, origin: str, column: str) -> None:
    """Every row has a label: a missing one is named by its row, not discovered as a label called 'None'."""
    missing = [i for i, value in enumerate(split[column]) if value is None or str(value).strip() == ""]
    if missing:
        rows = ", ".join(str(i + 1) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{split_name} ({origin}): {len(missing)} row(s) have no value in column {column!r} (rows {rows}, "
            "counting from 1); give every row a label or drop those rows"
        )


def tokenize_classification(
    split: Dataset,
    split_name: str,
    origin: str,
    data: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    pad_to_max_length: bool = False,
) -> Dataset:
    needed = [data.text_column, data.label_column] + ([data.text_pair_column] if data.text_pair_column else [])
    _require_columns(split, split_name, origin, needed)
    require_labels(split, split_name, origin, data.label_column)
    label_ids = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(v) for v in split[data.label_column]} - set(label_ids))
    if unknown:
        raise DataError(
            f"{split_name} ({origin}): label(s) {unknown[:5]} in column {data.label_column!r} are not in the "
            f"label set {label_names}"
        )

    def encode(batch: dict) -> dict:
        texts = [str(t).strip() for t in batch[data.text_column]]
        pairs = [str(t).strip() for t in batch[data.text_pair_column]] if data.text_pair_column else None
        encoded = tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=data.max_length,
            padding="max_length" if pad_to_max_length else False,
        )
        encoded["labels"] = [label_ids[str(v)] for v in batch[data.label_column]]
        return dict(encoded)

    return split.map(encode, batched=True, remove_columns=split.column_names)


# ---------------------------------------------------------------- causal LM (SFT)


def detect_format(split: Dataset, data: DataConfig) -> str:
    if data.format != "auto":
        return data.format
    columns = set(split.column_names) | set(data.columns)
    for name, required in FORMAT_COLUMNS.items():
        if all(col in columns for col in required):
            return name
    raise DataError(
        f"data.format='auto' found none of the SFT layouts in columns {sorted(split.column_names)}: expected "
        "'messages', 'prompt'+'completion', 'instruction'+'output' or 'text' (map others with data.columns)"
    )


def render_sft(
    row: dict, sft_format: str, tokenizer: PreTrainedTokenizerBase, *, chat_template: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """The full training text and the character spans that carry loss (completions/assistant turns).
    ``chat_template``: data.chat_template (prompt_completion and instruction rows through the template)."""
    eos = tokenizer.eos_token or ""
    templated = chat_template and bool(tokenizer.chat_template)
    if sft_format == "text":
        text = str(row["text"])
        return text + eos, [(0, len(text) + len(eos))]
    if sft_format == "prompt_completion":
        prompt, completion = str(row["prompt"]), str(row["completion"])
        if templated:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return _render_messages(messages, tokenizer)
        return prompt + completion + eos, [(len(prompt), len(prompt) + len(completion) + len(eos))]
    if sft_format == "instruction":
        user = str(row["instruction"])
        extra = str(row.get("input") or "")
        if templated:
            content = user + ("\n\n" + extra if extra else "")
            messages = [{"role": "user", "content": content}, {"role": "assistant", "content": str(row["output"])}]
            return _render_messages(messages, tokenizer)
        template = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
        prompt = template.format(instruction=user, input=extra)
        output = str(row["output"])
        return prompt + output + eos, [(len(prompt), len(prompt) + len(output) + len(eos))]
    if sft_format == "messages":
        if not tokenizer.chat_template:
            raise DataError("data.format='messages' needs a tokenizer with a chat template; this one has none")
        return _render_messages(list(row["messages"]), tokenizer)
    raise DataError(f"data.format: unknown SFT format {sft_format!r}")


def _render_messages(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    # Each assistant turn's span: from the end of the prompt that asks for it to the end of the turn, as
    # characters of the whole conversation; so each rendered prefix must be a prefix of the whole render.
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            turn = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (turn.startswith(prompt) and full.startswith(turn)):
                raise DataError(
                    f"the tokenizer's chat template renders the conversation up to message {i} differently from "
                    "the start of the whole conversation (it rewrites earlier turns, e.g. strips reasoning from "
                    "past assistant turns), so the assistant turns' loss masks cannot be placed; use a chat "
                    "template that renders earlier turns unchanged, or one assistant turn per row"
                )
            spans.append((len(prompt), len(turn)))
    return full, spans


def tokenize_sft(
    split: Dataset,
    split_name: str,
    origin: str,
    data: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    pad_to_max_length: bool = False,
) -> Dataset:
    """input_ids, attention_mask and labels; labels are -100 outside completions unless completion_only_loss=False."""
    if not tokenizer.is_fast:
        raise DataError("causal-LM SFT needs a fast tokenizer (offset mapping) for its loss masks")
    split, sft_format = canonical_sft_split(split, split_name, origin, data)

    def encode(row: dict) -> dict:
        text, spans = render_sft(row, sft_format, tokenizer, chat_template=data.chat_template)
        encoded = tokenizer(
            text,
            truncation=True,
            max_length=data.max_length,
            return_offsets_mapping=True,
            padding="max_length" if pad_to_max_length else False,
        )
        labels = []
        for token_id, mask, (start, end) in zip(
            encoded["input_ids"], encoded["attention_mask"], encoded.pop("offset_mapping"), strict=True
        ):
            in_span = end > start and any(s <= start < e for s, e in spans)
            keep = mask == 1 and (in_span or (not data.completion_only_loss and end > start))
            labels.append(token_id if keep else IGNORE_INDEX)
        encoded["labels"] = labels
        return dict(encoded)

    tokenized = split.map(encode, remove_columns=split.column_names)
    # A row whose completion was truncated away has no loss; keep it out rather than train on nothing.
    tokenized = tokenized.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))
    if len(tokenized) == 0:
        raise DataError(
            f"{split_name} ({origin}): no row keeps any completion token within data.max_length={data.max_length}"
        )
    return tokenized


def canonical_sft_split(split: Dataset, split_name: str, origin: str, data: DataConfig) -> tuple[Dataset, str]:
    """The split with its columns renamed to the canonical ones (data.columns), and its SFT format."""
    renamed = {source: canonical for canonical, source in data.columns.items() if source != canonical}
    _require_columns(split, split_name, origin, list(renamed))
    split = split.rename_columns(renamed) if renamed else split
    sft_format = detect_format(split, data)
    _require_columns(split, split_name, origin, list(FORMAT_COLUMNS[sft_format]))
    return split, sft_format


def render_prompt(
    row: dict, sft_format: str, tokenizer: PreTrainedTokenizerBase, *, chat_template: bool = True
) -> tuple[str, str]:
    """(the prompt exactly as training renders it before the answer, the reference answer) for generation."""
    templated = chat_template and bool(tokenizer.chat_template)
    if sft_format == "prompt_completion":
        if templated:
            return _generation_prompt(str(row["prompt"]), tokenizer), str(row["completion"])
        return str(row["prompt"]), str(row["completion"])
    if sft_format == "instruction":
        user, extra = str(row["instruction"]), str(row.get("input") or "")
        if templated:
            content = user + ("\n\n" + extra if extra else "")
            return _generation_prompt(content, tokenizer), str(row["output"])
        template = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
        return template.format(instruction=user, input=extra), str(row["output"])
    if sft_format == "messages":
        messages = list(row["messages"])
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise DataError("data.format='messages': a conversation without an assistant turn has no answer to score")
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        return prompt, str(messages[last]["content"])
    raise DataError(
        f"data.format={sft_format!r} has no prompt and answer to tell apart: generation needs prompt_completion, "
        "instruction or messages rows"
    )


def _require_columns(split: Dataset, split_name: str, origin: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in split.column_names]
    if missing:
        raise DataError(
            f"{split_name} ({origin}): missing column(s) {missing}; the file has {sorted(split.column_names)}"
        )


def _generation_prompt(user: str, tokenizer: PreTrainedTokenizerBase) -> str:
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
