"""Helpers shared by the tests (imported as ``helpers``: pytest puts ``tests/`` on the path)."""

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(name: str, path: str | Path) -> ModuleType:
    """Import the script at ``path`` (a recipe or a benchmark, not a package module) as a new
    module called ``name``; each call runs the script's top level again."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
