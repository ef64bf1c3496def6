"""What a user installs: the type checker's view of the public names, the dependencies, the sdist and the wheel.

The sdist's own test collection and the wheel's smoke import in a fresh virtual environment are in
.ci/run (they take a minute); here the archives are only built (about 5 s) and their contents read.
"""

import ast
import email
import importlib
import pathlib
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

import jaxlstm

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxlstm"

# Imported by jaxlstm only inside the functions that need them, each named in an error message with its
# extra (torch, keras: interop; matplotlib: explain --plot). ml_dtypes is a dependency of jaxlib.
OPTIONAL_IMPORTS = {"torch", "keras", "matplotlib", "ml_dtypes"}
# Required although jaxlstm never imports it by name: jax's own compiled backend.
REQUIRED_WITHOUT_IMPORT = {"jaxlib"}


def _type_checking_imports(tree: ast.Module) -> dict[str, str | None]:
    """The names the ``if TYPE_CHECKING:`` block imports, each mapped as ``_LAZY`` maps it."""
    blocks = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING"}]
    assert len(blocks) == 1, f"jaxlstm/__init__.py has {len(blocks)} `if TYPE_CHECKING:` blocks, expected 1"
    names: dict[str, str | None] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, f"not a relative import: {ast.unparse(node)}"
        for alias in node.names:
            # `from .linen import LSTM as LSTM` (an explicit re-export) or `from . import nnx as nnx`
            assert alias.asname == alias.name, f"{ast.unparse(node)} is not an explicit re-export"
            names[alias.name] = node.module
    return names


def test_type_checking_block_imports_exactly_the_lazy_names():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    assert _type_checking_imports(tree) == jaxlstm._LAZY
    assert set(jaxlstm._LAZY) <= set(jaxlstm.__all__)


def test_lazy_names_are_the_objects_the_type_checker_sees():
    for name, module in jaxlstm._LAZY.items():
        if module is None:
            assert getattr(jaxlstm, name) is importlib.import_module(f"jaxlstm.{name}")
        else:
            assert getattr(jaxlstm, name) is getattr(importlib.import_module(f"jaxlstm.{module}"), name)
    with pytest.raises(AttributeError, match="no attribute 'LSTMcell'"):
        jaxlstm.LSTMcell  # noqa: B018


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> the files of jaxlstm/ that import it (standard library and jaxlstm left out)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "jaxlstm":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower()


def test_required_dependencies_are_what_the_package_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {_requirement_name(r) for r in project["dependencies"]}
    imported = _third_party_imports()
    unlisted = set(imported) - required - OPTIONAL_IMPORTS
    assert not unlisted, f"jaxlstm/ imports {sorted(unlisted)}, not in [project] dependencies: {imported}"
    unused = required - set(imported) - REQUIRED_WITHOUT_IMPORT
    assert not unused, f"[project] dependencies {sorted(unused)} are never imported by jaxlstm/ (make them an extra)"
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    assert OPTIONAL_IMPORTS - {"ml_dtypes"} <= extras


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
    """The sdist and the wheel built from it, as ``python -m build`` makes them for a release."""
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


@pytest.mark.slow  # builds the sdist and the wheel (about 5 s)
def test_sdist_carries_what_its_tests_read(dist):
    (sdist,) = dist.glob("jaxlstm-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "jaxlstm/py.typed"}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*.py")}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "golden").iterdir() if p.is_file()}
    for folder in ("docs", "examples"):
        needed |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*") if p.suffix in {".md", ".py"}}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py")}
    assert not needed - names, f"the sdist lacks {sorted(needed - names)}"
    assert not {n for n in names if n.endswith(".pyc") or "__pycache__" in n}


@pytest.mark.slow  # builds the sdist and the wheel (about 5 s)
def test_wheel_ships_types_licence_and_only_the_package(dist):
    (wheel,) = dist.glob("jaxlstm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
    assert "jaxlstm/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {n.split("/")[0] for n in names} == {"jaxlstm", f"jaxlstm-{jaxlstm.__version__}.dist-info"}
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Version"] == jaxlstm.__version__
    unconditional = {_requirement_name(r) for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert unconditional == {_requirement_name(r) for r in project["dependencies"]}
    assert "optax" not in unconditional
    assert "Typing :: Typed" in metadata.get_all("Classifier")
