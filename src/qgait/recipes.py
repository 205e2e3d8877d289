"""The recipes shipped with qgait (``qgait/configs/*.yaml``, package data) and where their data paths point.

A recipe is named by its file stem (``gaitbase_casiab_cpu``) wherever a config path is taken: on the command line
(``qgait train gaitbase_casiab_cpu``), by :func:`qgait.config.load_config` and in a config's ``base:``. The
repository's ``configs/`` folder is a link to the same folder, so ``configs/gaitbase_casiab_cpu.yaml`` names the
same file (one copy, no sync step).

Relative ``data.source`` / ``data.store`` paths in a recipe are read against the *project folder*, not against the
recipe's own folder (which, once installed, is inside ``site-packages``): the repository checkout that holds the
package when qgait runs from one (``stores/casia-b-44`` is then ``<repository>/stores/casia-b-44``, and the data
``../shared/data/casia-b`` sits beside the repository), otherwise the working directory, where ``runs/`` goes too.
Every other config keeps the rule "relative to the file that sets them".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RecipeNotFound", "recipe_dir", "recipe_names", "recipe_path", "project_root", "is_recipe_file"]


class RecipeNotFound(FileNotFoundError):
    """A recipe name that is not shipped with qgait (the message lists those that are)."""


def recipe_dir() -> Path:
    """The folder of the shipped recipes (``qgait/configs`` inside the installed package)."""
    return Path(str(resources.files("qgait").joinpath("configs"))).resolve()


def recipe_names() -> list[str]:
    """Sorted names (file stems) of the shipped recipes."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name`` (``"gaitbase_casiab_cpu"`` or ``"gaitbase_casiab_cpu.yaml"``).

    Raises:
        RecipeNotFound: no such recipe (the message lists the shipped ones).
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = recipe_dir() / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not path.is_file():
        raise RecipeNotFound(f"{name}: no such recipe; shipped recipes: {', '.join(recipe_names())}")
    return path


def is_recipe_file(path: str | Path) -> bool:
    """True when ``path`` is one of the shipped recipe files (links resolved)."""
    return Path(path).resolve().parent == recipe_dir()


def _checkout_root() -> Path | None:
    """The repository checkout holding this package (``<root>/src/qgait``), or None for an installed package."""
    pkg = Path(__file__).resolve().parent
    root = pkg.parents[1]
    if pkg.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def project_root() -> Path:
    """The folder the recipes' relative data paths are read against: the repository checkout that holds the
    package, or the working directory for an installed package (module docstring)."""
    return _checkout_root() or Path.cwd().resolve()
