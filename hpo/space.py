"""Search spaces: typed parameters addressed by dotted key, with conditions, validated before anything runs.

What the keys mean (config keys, derived keys such as the effective batch) is the caller's business:
for fine-tunes, hpo.finetune.config_space checks them and turns sampled values into config overrides.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.errors import SearchConfigError


@dataclass(frozen=True, kw_only=True)
class Float:
    low: float
    high: float
    log: bool = False
    grid: tuple[float, ...] | None = None  # values the grid sampler enumerates
    when: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Int:
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Categorical:
    choices: tuple[Any, ...]
    when: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Fixed:
    value: Any
    when: dict[str, Any] | None = None


Parameter = Float | Int | Categorical | Fixed
TYPES = {"float": Float, "int": Int, "categorical": Categorical, "fixed": Fixed}


class SearchSpace:
    """Parameters in declaration order; ``when`` conditions may refer to earlier parameters or the base config."""

    def __init__(self, parameters: dict[str, Parameter]):
        self.parameters = dict(parameters)
        for key, parameter in self.parameters.items():
            _validate(key, parameter)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchSpace:
        """From YAML: ``{key: {type: float, low: 1e-5, high: 1e-3, log: true, when: {method.name: lora}}}``."""
        if not isinstance(raw, dict) or not raw:
            raise SearchConfigError("search.space must be a non-empty mapping of config keys to parameter specs")
        parameters = {}
        for key, spec in raw.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise SearchConfigError(f"search.space.{key}: expected a mapping with 'type' in {sorted(TYPES)}")
            spec = dict(spec)
            kind = spec.pop("type")
            if kind not in TYPES:
                raise SearchConfigError(f"search.space.{key}.type: expected one of {sorted(TYPES)}, got {kind!r}")
            allowed = {f.name for f in dataclasses.fields(TYPES[kind])}
            unknown = set(spec) - allowed
            if unknown:
                raise SearchConfigError(
                    f"search.space.{key}: unknown field(s) {sorted(unknown)} for type {kind!r}; "
                    f"allowed: {sorted(allowed)}"
                )
            for name in ("choices", "grid"):
                if name in spec and isinstance(spec[name], list):
                    spec[name] = tuple(spec[name])
            for name in ("low", "high"):
                if isinstance(spec.get(name), str):  # YAML 1.1 reads 1e-5 as a string
                    try:
                        spec[name] = float(spec[name])
                    except ValueError as exc:
                        raise SearchConfigError(
                            f"search.space.{key}.{name}: expected a number, got {spec[name]!r}"
                        ) from exc
            try:
                parameters[key] = TYPES[kind](**spec)
            except TypeError as exc:
                raise SearchConfigError(f"search.space.{key}: {exc}") from exc
        return cls(parameters)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for key, parameter in self.parameters.items():
            kind = next(name for name, cls in TYPES.items() if isinstance(parameter, cls))
            fields = {k: v for k, v in dataclasses.asdict(parameter).items() if v is not None}
            out[key] = {"type": kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}
        return out

    def suggest(self, trial: optuna.Trial, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sample the active parameters for ``trial``; ``base`` holds the base config's dotted values."""
        params: dict[str, Any] = {}
        for key, parameter in self.parameters.items():
            if not is_active(parameter.when, params, base or {}):
                continue
            if isinstance(parameter, Fixed):
                params[key] = parameter.value
            elif isinstance(parameter, Float):
                params[key] = trial.suggest_float(key, parameter.low, parameter.high, log=parameter.log)
            elif isinstance(parameter, Int):
                step = None if parameter.log else parameter.step
                params[key] = trial.suggest_int(key, parameter.low, parameter.high, log=parameter.log, step=step or 1)
            else:
                params[key] = trial.suggest_categorical(key, list(parameter.choices))
        return params

    def contains(self, params: dict[str, Any], base: dict[str, Any] | None = None) -> bool:
        """Whether ``params`` is a point of this space: active keys present, values inside their ranges."""
        point: dict[str, Any] = {}
        for key, parameter in self.parameters.items():
            if not is_active(parameter.when, point, base or {}):
                continue
            if key not in params or not _allowed(parameter, params[key]):
                return False
            point[key] = params[key]
        return set(params) == set(point)

    def grid_points(self, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every distinct point of the grid, conditions applied (inactive parameters are left out)."""
        values = {}
        for key, parameter in self.parameters.items():
            if isinstance(parameter, Float):
                if parameter.grid is None:
                    raise SearchConfigError(
                        f"search.space.{key}: the grid sampler needs 'grid: [values]' for float parameters"
                    )
                values[key] = list(parameter.grid)
            elif isinstance(parameter, Int):
                values[key] = list(range(parameter.low, parameter.high + 1, parameter.step))
            elif isinstance(parameter, Categorical):
                values[key] = list(parameter.choices)
            else:
                values[key] = [parameter.value]
        points, seen = [], set()
        for combination in itertools.product(*values.values()):
            point: dict[str, Any] = {}
            for key, value in zip(values, combination, strict=True):
                if is_active(self.parameters[key].when, point, base or {}):
                    point[key] = value
            marker = tuple(sorted((k, repr(v)) for k, v in point.items()))
            if marker not in seen:
                seen.add(marker)
                points.append(point)
        return points

    def grid_size(self, base: dict[str, Any] | None = None) -> int:
        return len(self.grid_points(base))


def finite_values(parameter: Parameter) -> list[Any] | None:
    """Every value a categorical, fixed or stepped (not log) int parameter can take; None for a range."""
    if isinstance(parameter, Categorical):
        return list(parameter.choices)
    if isinstance(parameter, Fixed):
        return [parameter.value]
    if isinstance(parameter, Int) and not parameter.log:
        return list(range(parameter.low, parameter.high + 1, parameter.step))
    return None


def _allowed(parameter: Parameter, value: Any) -> bool:
    if isinstance(parameter, Fixed):
        return value == parameter.value
    if isinstance(parameter, Categorical):
        return value in parameter.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(parameter, Int) and not float(value).is_integer():
        return False
    return parameter.low <= value <= parameter.high


def is_active(when: dict[str, Any] | None, params: dict[str, Any], base: dict[str, Any]) -> bool:
    if not when:
        return True
    for key, allowed in when.items():
        value = params.get(key, base.get(key))
        options = allowed if isinstance(allowed, (list, tuple)) else [allowed]
        if value not in options:
            return False
    return True


def _validate(key: str, parameter: Parameter) -> None:
    where = f"search.space.{key}"
    if isinstance(parameter, (Float, Int)):
        for name in ("low", "high"):
            value = getattr(parameter, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SearchConfigError(f"{where}.{name}: expected a finite number, got {value!r}")
        if isinstance(parameter, Int) and not all(isinstance(v, int) for v in (parameter.low, parameter.high)):
            raise SearchConfigError(
                f"{where}: int parameter bounds must be integers, got {parameter.low}, {parameter.high}"
            )
        if parameter.low >= parameter.high:
            raise SearchConfigError(f"{where}: empty range: low={parameter.low} must be < high={parameter.high}")
        if parameter.log and parameter.low <= 0:
            raise SearchConfigError(f"{where}: a log range needs low > 0, got low={parameter.low}")
        if isinstance(parameter, Int) and parameter.step <= 0:
            raise SearchConfigError(f"{where}.step must be > 0, got {parameter.step}")
        if isinstance(parameter, Float) and parameter.grid is not None:
            outside = [v for v in parameter.grid if not parameter.low <= v <= parameter.high]
            if not parameter.grid or outside:
                raise SearchConfigError(
                    f"{where}.grid: values must lie in [{parameter.low}, {parameter.high}]; got {list(parameter.grid)}"
                )
    if isinstance(parameter, Categorical) and not parameter.choices:
        raise SearchConfigError(f"{where}: empty list of choices")
