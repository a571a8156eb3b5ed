"""The house rules of the library's layout: the folders follow the flow slide → tiles →
network → polygons → merge → GeoJSON, and no import runs up that flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_frgnet"
CLI = Path(__file__).resolve().parents[1] / "cli"

# Each part may import itself and the parts before it, never one after it.
ORDER = ["base", "geometry", "io", "model", "engine", "eval", "train"]
BASE = {"errors", "config", "nucleus", "synthetic", "__init__"}
# What the training stage must not use: the slide-output stages of the engine.
TRAIN_FORBIDDEN = {"wsi_frgnet.engine.pipeline", "wsi_frgnet.engine.merge", "wsi_frgnet.engine.export"}


def _part(module: str) -> str:
    """The layer of a dotted module name inside wsi_frgnet."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name == "wsi_frgnet" or name.startswith("wsi_frgnet.")]


def _library_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(("wsi_frgnet", *path.relative_to(PACKAGE).with_suffix("").parts))


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_the_flow(path):
    module = _module_name(path)
    own = ORDER.index(_part(module))
    for imported in _imports(path):
        if imported.startswith("wsi_frgnet.cli"):
            pytest.fail(f"{module} imports the command line ({imported})")
        assert ORDER.index(_part(imported)) <= own, f"{module} imports {imported}, a later stage"
        if _part(module) == "train":
            assert imported not in TRAIN_FORBIDDEN, f"{module} imports {imported}"


def test_every_module_belongs_to_a_known_part():
    for path in _library_modules():
        assert _part(_module_name(path)) in ORDER, path


def test_few_top_level_modules_and_no_dumping_grounds():
    top = [path.stem for path in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    names = {path.stem for path in [*_library_modules(), *CLI.glob("*.py")]}
    assert not names & {"utils", "util", "misc", "helpers", "common_utils"}


@pytest.mark.parametrize("path", [*_library_modules(), *sorted(CLI.glob("*.py"))], ids=lambda p: p.name)
def test_no_file_over_500_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500


def test_code_and_weights_folders_are_not_twins():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith("__")}
    for name in folders:
        assert not {name + "s", name.rstrip("s")} - {name} & folders, name
