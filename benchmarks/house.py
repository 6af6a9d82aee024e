"""Sizes that keep the code easy to change: modules, classes and functions by lines, the largest first.

    .venv/bin/python benchmarks/house.py [src/whaleid/store]     # default: src

tests/test_house.py holds the limits (module 500, class 300, function under 60); this reports the numbers.
"""

import ast
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    sizes: dict[str, list[tuple[int, str]]] = {"modules": [], "classes": [], "functions": []}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        sizes["modules"].append((len(text.splitlines()), str(path)))
        for node in ast.walk(ast.parse(text)):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                sizes["classes"].append((lines, f"{path}:{node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sizes["functions"].append((lines, f"{path}:{node.lineno}:{node.name}"))
    for (name, found), limit in zip(sizes.items(), (500, 300, 59), strict=True):
        found.sort(reverse=True)
        over = sum(lines > limit for lines, _ in found)
        print(f"{name}: {len(found)}, median {found[len(found) // 2][0]} lines, over {limit}: {over}")
        for lines, where in found[:6]:
            print(f"  {lines:5d}  {where}")


if __name__ == "__main__":
    main()
