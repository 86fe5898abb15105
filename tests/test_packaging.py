"""What `pip install omni` puts on a user's machine: one import namespace, dependency ranges instead of
exact pins, and benchmarks that need nothing from tests/."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_folders() -> set[str]:
    """Every package the tree holds, named as it installs (folders mapped through package-dir)."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    names = set()
    for package, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            if "__pycache__" not in relative:
                names.add(".".join((package, *relative)))
    return names


def test_every_package_of_the_tree_is_installed_and_under_omni():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()
    assert all(name == "omni" or name.startswith("omni.") for name in listed)


def test_torch_is_a_range_and_the_tested_versions_are_constraints():
    dependencies = PYPROJECT["project"]["dependencies"]
    for name in ("torch", "torchvision"):
        requirement = next(d for d in dependencies if re.split(r"[<>=!~; ]", d, maxsplit=1)[0] == name)
        assert "==" not in requirement and ">=" in requirement, requirement
    constraints = (REPO / "constraints.txt").read_text()
    assert "torch==" in constraints and "torchvision==" in constraints
    for command in ((REPO / ".ci/run").read_text(), (REPO / "README.md").read_text().split("```bash", 2)[1]):
        assert "-c constraints.txt" in command


# What installs without extras: the runtime. The surfaces and tools below need their extras.
EXTRA_FOLDERS = {"omni/tools", "omni/server", "omni/eval", "demo"}


def _imported_top_level_names(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_runtime_imports_only_declared_dependencies():
    declared = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
                for requirement in PYPROJECT["project"]["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for folder in ("omni", "encoders", "talker"):
        for path in (REPO / folder).rglob("*.py"):
            relative = path.relative_to(REPO).as_posix()
            if any(relative.startswith(extra + "/") for extra in EXTRA_FOLDERS):
                continue
            for name in _imported_top_level_names(path):
                if name in sys.stdlib_module_names or name in ("omni", "__future__"):
                    continue
                owners = {owner.lower().replace("_", "-") for owner in distributions.get(name, [name])}
                if not owners & declared:
                    undeclared.setdefault(name, []).append(relative)
    assert not undeclared, f"imported by the runtime but not in [project] dependencies: {undeclared}"


def test_benchmarks_import_nothing_from_tests():
    for script in (REPO / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("tests"), f"{script.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("tests") for alias in node.names), script.name


@pytest.mark.slow
def test_the_wheel_installs_only_the_omni_namespace(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources it builds
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".omni-cache", "build", "*.egg-info", "__pycache__", "ckpt"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("omni-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {entry for entry in top_level if not entry.endswith(".dist-info")} == {"omni"}
    for module in ("omni/encoders/limits.py", "omni/talker/streaming.py", "omni/demo/app.py",
                   "omni/tools/media_factory.py", "omni/server/app.py"):
        assert module in names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and all("==" not in line for line in requires if "extra ==" not in line)
