"""Imports flow one way: shards/ at the bottom, curation/ and training/ beside each other, eval/ above training.

Every module of the four packages is parsed with `ast` (nothing is imported), and every import counts,
including the lazy ones inside functions and relative ones (resolved against the module's package).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "curation", "training", "eval")
# package -> the project packages it must not import
FORBIDDEN = {
    "shards": {"curation", "training", "eval"},
    "curation": {"training", "eval"},
    "training": {"curation", "eval"},
    "eval": {"curation"},
}


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module_parts = list(path.relative_to(root).with_suffix("").parts)
    module_parts = module_parts[:-1]   # the package the module (or __init__) is in: what "." means
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts[: len(module_parts) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return sorted(out)


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, name in imported_modules(path):
                top = name.split(".", 1)[0]
                if top in FORBIDDEN[package]:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_the_parser_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function and a relative one are both found."""
    pkg = tmp_path / "shards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from training.tokenizer import Tokenizer\n    return Tokenizer\n"
                                "from .schema import Sample\nimport eval.cli as c\n")
    names = [n for _, n in imported_modules(pkg / "bad.py", tmp_path)]
    assert names == ["training.tokenizer", "shards.schema", "eval.cli"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_module_is_checked(package):
    assert list((ROOT / package).rglob("*.py")), f"no modules found under {package}/"


def test_no_import_runs_upward():
    assert violations() == []
