"""One TOML file per run, `--set key=value` overrides of single keys, and the builder that turns the
result into typed, keyword-only config dataclasses: shared by `curate run` and `train launch`, so both
read, check and report on their configuration the same way."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


def parse_value(text: str) -> Any:
    """A TOML literal if it parses (1e-3, true, [0.5, 1.0], "x"), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``key=value`` (dotted key, list indices as numbers) to the raw TOML data, in place."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set {assignment!r}: empty part in key {key!r}")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"--set {key}: {where!r} is not an index of a list of {len(node)}")
            node = node[int(part)]
        else:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            node = nxt
        if not isinstance(node, (dict, list)):
            raise ValueError(f"--set {key}: {where!r} is a value, not a table")
    last = parts[-1]
    value = parse_value(text.strip())
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise ValueError(f"--set {key}: {last!r} is not an index of a list of {len(node)}")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    else:
        node[last] = value


def load_toml(path: str | None, overrides: list[str] | tuple[str, ...] = (), *,
              base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw configuration: ``base``, then the file at ``path``, then each override in order."""
    data: dict[str, Any] = dict(base or {})
    if path:
        with open(path, "rb") as f:
            data.update(tomllib.load(f))
    for assignment in overrides:
        apply_override(data, assignment)
    return data


# -- typed configuration -------------------------------------------------------------------------------
# One builder and one message style for every configuration: `config key 'optim.lr': must be > 0, got -1.0`.
# Components declare keyword-only dataclasses; `build` checks key names and value types (naming the key and
# the allowed keys), and each dataclass checks its own ranges in `__post_init__` with the helpers below.


class ConfigError(ValueError):
    """A bad configuration value: ``key`` is the dotted key, ``reason`` what is wrong and what is allowed."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"config key '{key}': {reason}")


def fail(key: str, reason: str) -> NoReturn:
    raise ConfigError(key, reason)


def check(cond: bool, key: str, reason: str) -> None:
    if not cond:
        fail(key, reason)


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if lo is not None and value < lo:
        fail(key, f"must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        fail(key, f"must be <= {hi}, got {value!r}")


def check_choice(key: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        fail(key, f"got {value!r}, allowed: {', '.join(map(str, allowed))}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        (elem,) = typing.get_args(tp) or (Any,)
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(elem, "tables")
        return "a list" if elem is Any else f"a list of {plural}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(tp: Any, value: Any, key: str) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, list[...], dict, a config dataclass), or a
    ConfigError naming ``key``. Integers pass as floats; nothing else is converted."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (tp,) = [t for t in options if t is not type(None)]
        return coerce(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            fail(key, f"must be {_type_name(tp)}, got {value!r}")
        (elem,) = typing.get_args(tp) or (Any,)
        out = []
        for i, v in enumerate(value):
            item_key = f"{key}.{i}"
            try:
                out.append(coerce(elem, v, item_key))
            except ConfigError as e:
                # a list item's own check names its key without the index ("sources.path"): add it
                if e.key.startswith(key + ".") and not e.key.startswith(item_key):
                    fail(item_key + e.key[len(key):], e.reason)
                raise
        return out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail(key, f"must be a table, got {value!r}")
        return dict(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"config key '{key}': the builder does not know type {tp!r}")
    if not ok:
        fail(key, f"must be {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def field_types(cls: type) -> dict[str, Any]:
    """The init fields of a config dataclass with their resolved types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build(cls: type[T], data: Any, key: str = "") -> T:
    """An instance of the config dataclass ``cls`` from raw TOML data: unknown keys are refused (naming
    the key and the known ones), missing required keys named, every value type-checked; ranges are the
    dataclass's own ``__post_init__``."""
    where = f"'{key}'" if key else "the top level"
    if not isinstance(data, dict):
        fail(key or "(top level)", f"must be a table, got {data!r}")
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        fail(_join(key, unknown[0]), f"unknown key; known keys in {where}: {', '.join(sorted(types_))}")
    for f in dataclasses.fields(cls):
        if f.init and f.name not in data and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            fail(_join(key, f.name), "required")
    kwargs = {name: coerce(types_[name], value, _join(key, name)) for name, value in data.items()}
    return cls(**kwargs)


def load(cls: type[T], path: str | None, overrides: list[str] | tuple[str, ...] = (), *,
         base: dict[str, Any] | None = None) -> T:
    """The TOML file at ``path`` with ``--set`` overrides, built into ``cls``."""
    return build(cls, load_toml(path, overrides, base=base))
