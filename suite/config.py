"""Dataclass configs filled from one YAML file plus `key=value` overrides.

Every field carries its help text in `metadata["help"]` (see `opt`), so `--help` of an entry
point prints the whole tree. Nested dataclasses map to nested YAML mappings; an override such as
`fusion.top_k=3` addresses a nested field with dots and its value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override does not fit the dataclass it fills."""


def opt(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None):
    """A dataclass field with help text; lists/dicts/dataclasses go through `factory`."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


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
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
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
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
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
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
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
