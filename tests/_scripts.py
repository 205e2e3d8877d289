"""Load a repository script (``scripts/<name>.py``) as a module, for the tests of the studies it runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as the module ``<name>_script`` (registered in ``sys.modules``: dataclasses look their
    module up there)."""
    if str(REPO / "scripts") not in sys.path:  # the scripts import their shared helpers (scripts/_tables.py)
        sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
