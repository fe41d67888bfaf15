"""Run a ``pcam-jax`` command in the test process, for tests of the command line; load an
``experiments/`` script as a module, for tests of its functions."""

import importlib.util
import pathlib
import sys
from unittest import mock

import pytest

from pcam_jax import cli


def pcam_jax_command(*args):
    """Run `pcam-jax ARGS` in this process; its exit status (absl exits through SystemExit).

    sys.argv is set as the console script would see it: ml_collections finds the
    ``--config.a.b=value`` overrides there. Arguments may be paths.
    """
    argv = ["pcam-jax", *map(str, args)]
    with pytest.raises(SystemExit) as exit_info, mock.patch.object(sys, "argv", argv):
        cli.main(argv)
    code = exit_info.value.code
    return 0 if code is None else code


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (the scripts are not a package)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
