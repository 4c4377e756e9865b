"""Typed dataclass configs: load from YAML, override from the command line, save resolved.

Every stage config is a (possibly nested) dataclass. ``load_config(Cls, path, overrides)`` builds
one from a YAML file plus ``key.sub=value`` overrides (values parsed as YAML scalars), refusing
unknown keys with a message that names the file and the field.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from magic_unlearn.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the source, field and fix."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (nested) to a plain dict of YAML/JSON-safe values."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def config_hash(cfg: Any, exclude: tuple[str, ...] = ()) -> str:
    """Stable short hash of a config (dataclass or dict), ignoring top-level keys in ``exclude``."""
    d = to_dict(cfg)
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k not in exclude}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _resolve_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _resolve_type(args[0]) if len(args) == 1 else tp
    return tp


def from_dict(cls: type[T], data: dict[str, Any] | None, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {unknown} for {cls.__name__}; "
            f"valid fields are {sorted(names)}"
        )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        val = data[f.name]
        tp = _resolve_type(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(val, dict):
            val = from_dict(tp, val, source=f"{source}:{f.name}")
        elif tp is float and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        elif tp is float and isinstance(val, str):
            try:
                val = float(val)
            except ValueError as e:
                raise ConfigError(
                    f"{source}: field '{f.name}' expects a number, got {val!r}"
                ) from e
        elif tp is int and isinstance(val, str):
            try:
                val = int(val)
            except ValueError as e:
                raise ConfigError(
                    f"{source}: field '{f.name}' expects an integer, got {val!r}"
                ) from e
        kwargs[f.name] = val
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from e


def deep_merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` updated recursively with ``upd`` (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, raw = ov.split("=", 1)
        val = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: '{p}' is not a section")
        node[parts[-1]] = val
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Load dataclass ``cls`` from an optional YAML file plus ``KEY=VALUE`` overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    apply_overrides(data, overrides)
    where = str(path) if path is not None else ("--set" if overrides else "<defaults>")
    return from_dict(cls, data, source=where)


def read_yaml_mapping(
    path: str | Path, what: str = "config file", expect: str = "field: value"
) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; errors name the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of {expect}")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
