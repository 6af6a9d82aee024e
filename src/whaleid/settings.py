"""Typed settings from plain data: one ``from_dict`` for every settings dataclass, and YAML files with overrides.

Settings travel as JSON (checkpoints, identifier folders) and YAML (recipes); each
dataclass checks its own values in ``__post_init__``, and this module only maps keys to
fields, so an unknown key is refused with the valid ones listed, at any depth.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from whaleid.errors import UserError

T = TypeVar("T")

__all__ = ["from_dict", "to_dict", "load_yaml", "apply_overrides"]


@cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _dataclass_in(hint: Any) -> type | None:
    """The settings dataclass a field holds (also through ``X | None``), else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def from_dict(kind: type[T], values: Any, name: str | None = None) -> T:
    """``kind(**values)`` with nested settings built too; unknown keys are one clear UserError."""
    name = name or kind.__name__
    if isinstance(values, kind):
        return values
    if not isinstance(values, Mapping):
        raise UserError(f"the {name} settings must be a mapping of keys, got {values!r}")
    known = {f.name for f in dataclasses.fields(kind) if f.init}
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown {name} keys: {sorted(map(str, unknown))}; valid: {sorted(known)}")
    hints = _hints(kind)
    out = {}
    for key, value in values.items():
        nested = _dataclass_in(hints[key])
        if nested is not None and value is not None:
            value = from_dict(nested, value, f"{name}.{key}")
        elif typing.get_origin(hints[key]) is tuple and isinstance(value, list):
            value = tuple(value)  # JSON and YAML have lists only
        out[key] = value
    try:
        return kind(**out)
    except TypeError as error:  # a required field left out
        raise UserError(f"the {name} settings are incomplete: {error}") from None


def to_dict(settings: Any) -> dict:
    """Plain JSON/YAML-ready data (tuples as lists), the inverse of :func:`from_dict`."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(settings))


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def apply_overrides(tree: dict, overrides: Sequence[str]) -> dict:
    """``key.sub=value`` overrides (values read as YAML) applied to a settings tree in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key.sub=value")
        try:
            _set(tree, key.strip(), yaml.safe_load(value))
        except (AttributeError, TypeError, yaml.YAMLError) as error:  # a key below a plain value, or unreadable YAML
            raise UserError(f"cannot apply the override {item!r}: {' '.join(str(error).split())}") from error
    return tree


def load_yaml(path: str | Path | None, overrides: Sequence[str] = ()) -> dict:
    """A YAML settings file (or nothing) as a tree, with ``key.sub=value`` overrides applied."""
    try:
        tree = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot read the settings file {path}: {' '.join(str(error).split())}") from error
    if not isinstance(tree, dict):
        raise UserError(f"{path} must hold a mapping of settings, got {type(tree).__name__}")
    return apply_overrides(tree, overrides)
