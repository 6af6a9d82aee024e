"""The house rules of docs/architecture.md that lint-imports cannot see: sizes that keep code easy to change."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "whaleid"
MODULES = sorted(SRC.rglob("*.py"))
LIMITS = {"module": 500, "class": 300, "function": 59}  # lines; functions under 60


def _sizes(path: Path, root: Path = SRC.parent) -> list[tuple[str, str, int]]:
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(root)
    sizes = [("module", str(where), len(text.splitlines()))]
    for node in ast.walk(ast.parse(text)):
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            sizes.append((kind, f"{where}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1))
    return sizes


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_class_or_function_is_over_its_size(path):
    over = [f"{kind} {name}: {lines} lines" for kind, name, lines in _sizes(path) if lines > LIMITS[kind]]
    assert not over, over


def test_the_size_check_sees_an_oversized_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n", encoding="utf-8")
    assert _sizes(tmp_path / "long.py", tmp_path) == [("module", "long.py", 61), ("function", "long.py:1 long", 61)]


def test_web_writes_no_sql():
    """The pages and the API call the store; every query lives in store/ (lint-imports forbids sqlalchemy too)."""
    sql = re.compile(r"(?<![\w.])(select|insert|update|delete)\(|\bsession\.|\.execute\(|\.scalars?\(")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((SRC / "web").glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if sql.search(line)
    ]
    assert not found, found
