"""Where the shipped recipes are: the demo's and the benchmark's YAML files travel with the package.

The recipes have one home, the top-level ``configs/`` folder of the source tree. The build maps that
folder into the wheel as ``torchdistill_mismatch/configs/`` (``setup.py``), so an installed package finds
them with :mod:`importlib.resources`; an editable install or a bare checkout has no such folder inside
the package and reads ``configs/`` beside it.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

# The folder's name inside the wheel and in the source tree alike.
CONFIG_FOLDER = 'configs'
# The source tree's configs/ (editable installs, a checkout on PYTHONPATH).
SOURCE_CONFIG_DIR = Path(__file__).resolve().parent.parent / CONFIG_FOLDER


def _shipped_config_dir() -> Path | None:
    """``torchdistill_mismatch/configs`` of an installed wheel, or None when the package has none."""
    folder = resources.files(__package__).joinpath(CONFIG_FOLDER)
    # A zipped package would give a Traversable that is not a file system path; the recipes are read
    # by path (torchdistill's load_yaml_file), so only an unpacked installation counts.
    if isinstance(folder, Path) and folder.is_dir():
        return folder
    return None


def recipe_dir(name: str = '') -> Path:
    """The folder of the shipped recipes (``configs/`` of the source tree), or its subfolder ``name``.

    Args:
        name: a subfolder such as ``demo`` or ``fashion_mnist``; empty for the folder itself.

    Returns:
        The folder inside the installed package when it has one, else the source tree's ``configs/``.
        The path is returned whether or not it exists; callers name the flag to use when it does not.
    """
    root = _shipped_config_dir() or SOURCE_CONFIG_DIR
    return root / name if name else root


def recipe_file(relative: str) -> Path:
    """A shipped recipe by its path under ``configs/``, e.g. ``fashion_mnist/bench.yaml``."""
    return recipe_dir() / relative
