"""The repository's scripts (``k8s/render_manifests.py`` …) as modules, for the tests that check
what they render."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_script(path: Path) -> ModuleType:
    """Import the Python file at ``path`` (not on ``sys.path``) under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
