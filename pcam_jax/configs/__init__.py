"""Config files (ml_collections): ``base`` plus presets ``synthetic`` (the demo), ``mura``
(the paper's settings) and ``tiny`` (tests). Each file has ``get_config()``.

`get_config(name_or_path)` resolves a preset name or a path to a config file, so the CLI and
library code accept ``--config synthetic`` as well as ``--config path/to/my_config.py``.
"""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections

PRESETS = ("base", "synthetic", "mura", "tiny")
_HERE = pathlib.Path(__file__).parent


def config_path(name_or_path: str) -> pathlib.Path:
    """Path of a preset (``"tiny"``) or of a config file given by path; clear error otherwise."""
    if name_or_path in PRESETS:
        return _HERE / f"{name_or_path}.py"
    path = pathlib.Path(name_or_path.split(":", 1)[0])
    if not path.is_file():
        raise FileNotFoundError(
            f"config {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    return path


def get_config(name_or_path: str = "base") -> ml_collections.ConfigDict:
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"pcam_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
