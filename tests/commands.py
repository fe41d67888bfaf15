"""Run a ``pcam-jax`` command in the test process, for tests of the command line."""

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
