"""Type checks for config sections, driven by the dataclasses' type hints."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml

from finetune.errors import ConfigError


def parse_override_value(text: str) -> Any:
    """Parse a command-line value as a YAML scalar or list: '1e-4' -> 0.0001, 'null' -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_section(section: str, section_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` coerced to the field types of ``section_cls``; raise ConfigError naming the key."""
    hints = typing.get_type_hints(section_cls)
    allowed = {f.name for f in dataclasses.fields(section_cls)}
    checked = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"unknown key '{section}.{key}'; allowed keys in '{section}': {sorted(allowed)}")
        checked[key] = coerce(f"{section}.{key}", hints[key], value)
    return checked


def coerce(name: str, hint: Any, value: Any) -> Any:
    ok, result = _try_coerce(hint, value)
    if not ok:
        raise ConfigError(f"{name}: expected {describe(hint)}, got {value!r} ({type(value).__name__})")
    return result


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _try_coerce(hint: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool):
            # YAML 1.1 reads no/off and yes/on as booleans: mixed_precision=no means the word.
            words = [word for word in (("yes", "on") if value else ("no", "off")) if word in choices]
            return bool(words), words[0] if words else value
        return (value in choices), value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, result = _try_coerce(option, value)
            if ok:
                return True, result
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" as a string; accept numeric strings.
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (item_hint,) = typing.get_args(hint)
        items = [_try_coerce(item_hint, item) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        key_hint, value_hint = typing.get_args(hint)
        pairs = [(_try_coerce(key_hint, k), _try_coerce(value_hint, v)) for k, v in value.items()]
        ok = all(k[0] and v[0] for k, v in pairs)
        return ok, {k[1]: v[1] for k, v in pairs}
    return isinstance(value, hint), value


def check_packing(task: str, method: str, pad_to_max_length: bool) -> None:
    """data.packing joins a batch's rows into one: only causal LMs whose every row is plain tokens."""
    if task != "causal_lm":
        raise ConfigError("data.packing joins SFT rows into one sequence: it needs model.task='causal_lm'")
    if method in ("prompt_tuning", "prefix_tuning"):
        raise ConfigError(
            f"data.packing cannot be used with method.name={method!r}: its virtual tokens would precede only the "
            "first of the packed rows; use lora, dora, ia3 or full"
        )
    if pad_to_max_length:
        raise ConfigError("data.packing removes padding; training.pad_to_max_length asks for it: set one to false")
