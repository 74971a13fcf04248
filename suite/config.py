"""Dataclass configs filled from one YAML file plus `key=value` overrides.

Every field carries its help text in `metadata["help"]` (see `opt`), so `--help` of an entry
point prints the whole tree. Nested dataclasses map to nested YAML mappings; an override such as
`fusion.top_k=3` addresses a nested field with dots and its value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override does not fit the dataclass it fills."""


NUMBER_LIMIT = 10**12  # no setting of this suite is larger; a 5,000-digit integer is a typo or an attack


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    factory: Any = None,
    lo: float | None = 0,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
):
    """A dataclass field with help text; lists/dicts/dataclasses go through `factory`.

    Numeric fields carry a range checked when the config is read: by default finite and >= 0
    (`lo=None` removes the lower bound); `lo_open` / `hi_open` make a bound strict."""
    meta = {"help": help, "range": (lo, hi, lo_open, hi_open)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_range(value: Any, rng: tuple, where: str) -> None:
    """Raise ConfigError unless a numeric `value` lies in `rng` = (lo, hi, lo_open, hi_open)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    lo, hi, lo_open, hi_open = rng
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{where}: {value!r} is out of range {span}")


class _PlainLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a config has no use for them, and an alias bomb (a billion laughs)
    would expand to gigabytes when the config is copied. Nesting is bounded too."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise ConfigError("YAML aliases (*name) are not allowed in a config")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > 50:
                raise ConfigError("YAML nested more than 50 levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml(text: str) -> Any:
    loader = _PlainLoader(text)  # a SafeLoader: plain data only, no Python objects
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp` (the simple types configs use) and convert."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dc(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_t = args[0] if args else Any
        return [_coerce(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) and abs(value) > NUMBER_LIMIT:
            raise ConfigError(f"{where}: {str(value)[:20]}... is too large")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > NUMBER_LIMIT:
            raise ConfigError(f"{where}: an integer of {len(str(abs(value)))} digits is too large")
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp in (int, float, bool, str):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a (nested) mapping, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    for f in dataclasses.fields(cls):  # every numeric setting in its range, when the config is read
        if f.name in kwargs and "range" in f.metadata:
            check_range(kwargs[f.name], f.metadata["range"], f"{where}.{f.name}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested mapping (values parsed as YAML)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, raw = ov.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {p} is not a section")
        try:
            node[parts[-1]] = _yaml(raw) if raw != "" else ""
        except (yaml.YAMLError, ConfigError, ValueError) as e:  # ValueError: a 5,000-digit integer
            raise ConfigError(f"override {key.strip()}: not a valid value ({_yaml_problem(e)})") from None
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Defaults of `cls`, updated by the YAML at `path`, then by `overrides`."""
    data = to_dict(cls())
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        try:
            loaded = _yaml(text) or {}
        except (yaml.YAMLError, ConfigError, ValueError) as e:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _deep_update(data, loaded, where)
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data, where)


def _deep_update(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v, f"{where}.{k}")
        else:
            base[k] = v


def describe(cls: type, prefix: str = "", inst: Any = None) -> list[str]:
    """One line per field: dotted name, default and help text (for `--help`). Nested defaults are
    read from the parent's default instance (a parent may give a section non-default values)."""
    lines = []
    hints = typing.get_type_hints(cls)
    inst = cls() if inst is None else inst
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dc(tp):
            lines += describe(tp, f"{prefix}{f.name}.", getattr(inst, f.name))
        else:
            choices = (
                f" [{' | '.join(map(str, typing.get_args(tp)))}]" if typing.get_origin(tp) is typing.Literal else ""
            )
            lines.append(f"  {prefix}{f.name} = {getattr(inst, f.name)!r}{choices}  # {f.metadata.get('help', '')}")
    return lines


def field_type(cls: type, dotted: str, where: str = "config") -> Any:
    """The annotation of the field a dotted key addresses; ConfigError naming the bad part."""
    tp: Any = cls
    for i, part in enumerate(dotted.split(".")):
        if not _is_dc(tp):
            raise ConfigError(f"{where}: {dotted!r}: {'.'.join(dotted.split('.')[:i])} is not a section")
        hints = typing.get_type_hints(tp)
        if part not in hints or part not in {f.name for f in dataclasses.fields(tp)}:
            raise ConfigError(
                f"{where}: {dotted!r}: unknown key {part!r}; known: {sorted(f.name for f in dataclasses.fields(tp))}"
            )
        tp = hints[part]
    return tp
