"""Issue 23's size rules for jaxlstm/: no function over 80 lines (its docstring not counted), no file over 600."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxlstm"
FILES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 600


def _functions(tree):
    """``(name, lines, first line)`` of every function: its lines but its docstring's."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines -= (first.end_lineno or first.lineno) - first.lineno + 1
            yield node.name, lines, node.lineno


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sizes(path):
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.name}: {lines} lines (at most {MAX_FILE_LINES})"
    long = [
        f"{name} ({size} lines, line {line})"
        for name, size, line in _functions(ast.parse(text))
        if size > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
