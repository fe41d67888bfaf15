"""Config files (ml_collections): ``base`` plus presets ``synthetic`` (the demo), ``mura``
(the paper's settings), ``fracatlas`` (real fractures with masks) and ``tiny`` (tests). Each file has ``get_config()``.

`get_config(name_or_path)` resolves a preset name or a path to a config file, so the CLI and
library code accept ``--config synthetic`` as well as ``--config path/to/my_config.py``.

`complete(saved)` is how a config stored in a checkpoint is read back: merged onto today's base
defaults, so every field exists and no module restates a default (``config.x.get(name, default)``).
A field the checkpoint predates takes the value of the behaviour the run was trained with where
that differs from today's default: one table, `BEFORE_THE_FIELD`.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections.abc import Mapping

import ml_collections

# Fields added after checkpoints were first written, whose default then differs from the
# behaviour those checkpoints were trained with: {dotted field: the old behaviour's value}.
BEFORE_THE_FIELD = {
    "stage2.masked_batch_norm": "running",   # the masked pass used the running BN statistics
    "eval.trust_images": 0,                  # no faithfulness / sanity section
    "eval.shortcut_limbs": 0,                # no counterfactual shortcut section
}

PRESETS = ("base", "synthetic", "mura", "fracatlas", "tiny")
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


def _merged(defaults: dict, saved: dict, prefix: str = "") -> dict:
    out = {}
    for key in defaults.keys() | saved.keys():
        name = f"{prefix}{key}"
        if key in defaults and isinstance(defaults[key], dict) and isinstance(saved.get(key, {}), dict):
            out[key] = _merged(defaults[key], saved.get(key, {}), f"{name}.")  # a whole section may be new
        elif key not in saved:
            out[key] = BEFORE_THE_FIELD.get(name, defaults[key])
        else:
            out[key] = saved[key]
    return out


def to_json_dict(config) -> dict:
    """The config as plain JSON types (tuples become lists), as a checkpoint stores it."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config), default=str))


def flatten(tree, prefix: str = "") -> dict:
    """A nested JSON-style dict as ``{"section.field": value}`` (leaves only)."""
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def complete(saved) -> ml_collections.ConfigDict:
    """A saved config (a checkpoint's JSON dict or a ConfigDict) with every field of today's base
    config: saved values kept, absent fields from `BEFORE_THE_FIELD` or the base defaults."""
    return ml_collections.ConfigDict(_merged(to_json_dict(get_config("base")), to_json_dict(saved)))
