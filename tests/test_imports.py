"""No import cycles: jaxlstm's module graph, read from the source with ``ast`` (nothing is imported).

Every intra-package import counts (``from . import _checks``, ``from .cell import
X``, ``from ..linen import Y``, ``import jaxlstm.scan``), including one inside a
function: a lazy import only postpones a cycle, the two modules still need each
other. Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.

A package's ``__init__`` importing its own submodules (to re-export their names)
is not an edge: a submodule may import its package (``from . import __version__``)
without forming a cycle with it.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "jaxlstm"

# Where a module may import by a name computed at run time, which this test cannot follow.
# jaxlstm/__init__.py: the lazy ``__getattr__`` loader of the Flax modules.
# interop/_common.py: ``require(name, ...)`` for the optional third-party packages (torch, keras);
# ``test_dynamic_imports_only_in_the_lazy_loader`` checks that every call names one of those.
DYNAMIC_IMPORTERS = {"jaxlstm", "jaxlstm.interop._common"}

Graph = dict[str, dict[str, list[str]]]  # module -> imported module -> ["path:line", ...]


def module_files(package_dir: pathlib.Path = ROOT / PACKAGE) -> dict[str, pathlib.Path]:
    """``{"jaxlstm.cell": Path(".../jaxlstm/cell.py"), "jaxlstm": Path(".../jaxlstm/__init__.py"), ...}``."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def import_nodes(tree: ast.AST):
    """Every ``import``/``from ... import`` in ``tree``, at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                yield from import_nodes(ast.Module(body=[branch], type_ignores=[]))
        else:
            yield from import_nodes(node)


def imported_modules(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``node``, written in ``module``, imports.

    ``from . import _checks`` (in ``jaxlstm.cell``) → ``jaxlstm._checks``, a submodule;
    ``from .cell import LSTMParams`` → ``jaxlstm.cell``, the module holding the name;
    ``import jaxlstm.interop.torch`` → ``jaxlstm.interop.torch``.
    """
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {name for name in names if name in known}
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in known:
            found.add(submodule)
        elif base in known:
            found.add(base)
    return found


def import_graph(files: dict[str, pathlib.Path]) -> Graph:
    """module → the intra-package modules it imports, each with where (``path:line``)."""
    known = set(files)
    graph: Graph = {module: {} for module in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in imported_modules(module, is_package, node, known):
                if target == module or (is_package and target.startswith(module + ".")):
                    continue  # a package re-exporting its own submodules
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
                graph[module].setdefault(target, []).append(where)
    return graph


def find_cycles(graph: dict[str, dict[str, object]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search, each as a path ``[a, b, ..., a]``; ``[]`` if none."""
    cycles, state, path = [], {}, []  # state: 1 on the current path, 2 done

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def describe(cycle: list[str], graph: Graph) -> str:
    """``a -> b (a.py:3) -> a (b.py:7)``: each step with the import lines that make it."""
    steps = [cycle[0]]
    for source, target in zip(cycle, cycle[1:], strict=False):
        steps.append(f"{target} ({', '.join(graph[source][target])})")
    return " -> ".join(steps)


# ------------------------------------------------------------------------------- jaxlstm itself


def test_no_import_cycles():
    graph = import_graph(module_files())
    assert "jaxlstm.cell" in graph and "jaxlstm.interop.torch" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in jaxlstm:\n" + "\n".join(describe(c, graph) for c in cycles)


def _dynamic_imports(tree: ast.AST):
    """Calls of ``importlib.import_module``/``import_module``/``__import__``, and a module ``__getattr__``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                yield node
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            yield node


def test_dynamic_imports_only_in_the_lazy_loader():
    """Imports the graph cannot see happen in two known places only, so the graph above is the whole truth."""
    files = module_files()
    trees = {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in files.items()}
    dynamic = {
        f"{files[module].relative_to(ROOT)}:{node.lineno}"
        for module, tree in trees.items()
        if module not in DYNAMIC_IMPORTERS
        for node in _dynamic_imports(tree)
    }
    assert not dynamic, f"dynamic imports outside {sorted(DYNAMIC_IMPORTERS)}: {sorted(dynamic)}"

    # require(name, ...) imports third-party packages only, never a jaxlstm module.
    required = [
        node.args[0]
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
    ]
    assert required, "no require(...) calls found: update DYNAMIC_IMPORTERS"
    for arg in required:
        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), ast.unparse(arg)
        assert not arg.value.startswith((".", PACKAGE)), arg.value

    # The lazy loader's table names real modules: {"LSTM": "linen", "nnx": None (itself), ...}.
    lazy = next(
        node.value
        for node in trees[PACKAGE].body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets)
    )
    for name, module in ast.literal_eval(lazy).items():
        assert f"{PACKAGE}.{module or name}" in files, (name, module)


def test_nnx_does_not_import_linen():
    """``import jaxlstm.nnx`` loads neither ``jaxlstm.linen`` nor more of ``flax.linen`` than ``flax.nnx`` does.

    (Flax 0.12's own ``import flax`` loads ``flax.linen``, so only what jaxlstm adds is measured.)
    """
    script = textwrap.dedent(
        """
        import sys
        import flax.nnx
        before = set(sys.modules)
        import jaxlstm.nnx
        added = sorted(set(sys.modules) - before)
        print("\\n".join(name for name in added if name == "jaxlstm.linen" or name.startswith("flax.linen")))
        """
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu"),
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"import jaxlstm.nnx also imported: {result.stdout.split()}"


# ------------------------------------------------------------------------- the checker checked


def test_find_cycles_on_synthetic_graphs():
    assert find_cycles({"a": {"b": 0}, "b": {"c": 0}, "c": {"a": 0}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a": 0}}) == [["a", "a"]]
    assert find_cycles({"a": {"b": 0, "c": 0}, "b": {"d": 0}, "c": {"d": 0}, "d": {}}) == []  # a diamond
    # two separate cycles, both reported
    graph = {"a": {"b": 0}, "b": {"a": 0}, "c": {"d": 0}, "d": {"c": 0}, "e": {"a": 0}}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]


def test_import_graph_on_a_synthetic_package(tmp_path):
    """Every import form resolves to its module; ``TYPE_CHECKING`` imports and ``__init__`` re-exports don't count."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from .a import f\nfrom . import sub\n",
        "a.py": textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            import os
            from . import b
            if TYPE_CHECKING:
                from .c import Hint
            else:
                from .d import Runtime

            def lazy():
                from .c import late
                import pkg.sub.e
            """
        ),
        "b.py": "from pkg import a\n",
        "c.py": "",
        "d.py": "",
        "sub/__init__.py": "from .e import g\nfrom .. import c\n",
        "sub/e.py": "from ..d import x\nfrom .. import __version__\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    files = module_files(package)
    assert set(files) == {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.e"}
    graph = {module: set(targets) for module, targets in import_graph(files).items()}
    assert graph == {
        "pkg": set(),  # its own submodules
        "pkg.a": {"pkg.b", "pkg.c", "pkg.d", "pkg.sub.e"},  # pkg.c from lazy(), not from TYPE_CHECKING
        "pkg.b": {"pkg.a"},
        "pkg.c": set(),
        "pkg.d": set(),
        "pkg.sub": {"pkg.c"},
        "pkg.sub.e": {"pkg.d", "pkg"},
    }
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"]]
    full = import_graph(files)
    assert describe(cycles[0], full) == f"pkg.a -> pkg.b ({package / 'a.py'}:4) -> pkg.a ({package / 'b.py'}:1)"
