"""A patch that "adds" the given functions of a module, for ``mutmut run --use-patch-file``:
mutmut then mutates those lines only (the parts of a module that hold its guarantees).

    .venv/bin/python tools/mutation/patch.py server/cluster/bus.py RedisBus._deliver RedisBus._fill ...
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def spans(tree: ast.Module, names: set[str]) -> list[tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + node.name
                if name in names:
                    found[name] = (node.lineno, node.end_lineno or node.lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, name + ".")

    visit(tree.body, "")
    if missing := names - set(found):
        raise SystemExit(f"patch.py: not found: {', '.join(sorted(missing))}")
    return sorted(found.values())


def patch(module: str, names: list[str]) -> str:
    lines = Path(module).read_text().splitlines()
    chosen = spans(ast.parse("\n".join(lines)), set(names)) if names else [(1, len(lines))]
    out = [f"--- {module}", f"+++ {module}"]
    for first, last in chosen:
        out.append(f"@@ -0,0 +{first},{last - first + 1} @@")
        out.extend("+" + line for line in lines[first - 1:last])
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.stdout.write(patch(sys.argv[1], sys.argv[2:]))
