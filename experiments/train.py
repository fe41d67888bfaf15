"""Train pcam_jax's three stages: the thin absl entry point (Flax-examples style).

    python experiments/train.py --config synthetic --workdir work/run [--stages 1,2,3]
    python experiments/train.py --config pcam_jax/configs/mura.py --workdir work/mura \
        --config.stage2.mask_mode=erase --data_dir ~/tensorflow_datasets

The same flags as ``pcam-jax train`` (defined in `pcam_jax.training.cli`); the work is in
`pcam_jax.training.loop.train_and_evaluate`. Re-running the command resumes the run.
"""

import sys

from absl import app

from pcam_jax import runtime
from pcam_jax.cli import resolve_config_argv
from pcam_jax.training import cli

if __name__ == "__main__":
    runtime.configure()
    # `--config synthetic` names a preset; absl's config flag wants a path.
    app.run(cli.main, argv=[sys.argv[0]] + resolve_config_argv(sys.argv[1:]))
