"""One TOML file per run, and `--set key=value` overrides of single keys: shared by `curate run`
and `train launch`, so both read their configuration the same way."""

from __future__ import annotations

import tomllib
from typing import Any


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
