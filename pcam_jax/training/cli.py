"""``pcam-jax train --config CONFIG --workdir DIR [--stages 1,2,3] [--data_dir DIR]``.

``--config`` is a config file or a preset name (synthetic, mura, tiny, base); any field can
be overridden on the command line, e.g. ``--config.stage2.mask_mode=erase``. Running the
same command again resumes where the run stopped (finished stages are skipped).

Data: ``--data_dir`` (or ``config.data.data_dir``) is the TFDS data directory; empty means
TFDS's default (``~/tensorflow_datasets``). The synthetic dataset is built there on first use.
Exit status: 0 done, 1 the loss became NaN/Inf (the last good checkpoint is kept), 2 a
checkpoint written with a different config or bad arguments.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from pcam_jax import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file or preset (synthetic, mura, tiny); override fields with --config.a.b=value.",
    lock_config=True, allow_override=True)
# allow_override: other commands (evaluate, prepare) define flags of the same names, and a
# process (the tests) may import several command modules.
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, metrics.jsonl, tensorboard/.",
                               allow_override=True)
_STAGES = flags.DEFINE_string("stages", "1,2,3", "Stages to train, in order, e.g. 1,2,3 or 3.", allow_override=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: config.data.data_dir, "
                                "else TFDS's default).", allow_override=True)

def quiet_logs() -> None:
    """absl INFO logs (Orbax writes several per checkpoint, TFDS per dataset) would bury the
    progress bar: show warnings and errors only, unless ``--verbosity`` was given."""
    from absl import logging

    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run(config, workdir: str, stages: str = "1,2,3", data_dir: str | None = None) -> dict:
    """Train as the command does, turning known failures into a message and an exit status."""
    from pcam_jax.training import checkpointing, loop, mesh

    runtime.configure()  # project XLA flags (if JAX has not started yet) and the compilation cache
    mesh.maybe_initialize_distributed()
    quiet_logs()
    try:
        stages = loop.parse_stages(stages)
        return loop.train_and_evaluate(config, workdir, stages, data_dir=data_dir)
    except loop.NonFiniteLossError as error:
        print(f"pcam-jax train: {error}", file=sys.stderr)
        sys.exit(1)
    except (checkpointing.CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"pcam-jax train: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"pcam-jax train: unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if _CONFIG.value is None:
        raise SystemExit("pcam-jax train: --config is required (a preset: synthetic, mura, tiny, or a file)")
    if not _WORKDIR.value:
        raise SystemExit("pcam-jax train: --workdir is required (the run directory)")
    run(_CONFIG.value, _WORKDIR.value, _STAGES.value, _DATA_DIR.value or None)
