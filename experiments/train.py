"""Train pcam_jax's three stages: the thin absl entry point (Flax-examples style).

    python experiments/train.py --config synthetic --workdir work/run [--stages 1,2,3]
    python experiments/train.py --config pcam_jax/configs/mura.py --workdir work/mura \
        --config.stage2.mask_mode=erase --data_dir ~/tensorflow_datasets

Exactly ``pcam-jax train`` (`pcam_jax.cli.train`; flags in `pcam_jax.cli.flags`); the work is
in `pcam_jax.training.loop.train_and_evaluate`. Re-running the command resumes the run.
"""

import sys

from pcam_jax.cli import main

if __name__ == "__main__":
    main([sys.argv[0], "train", *sys.argv[1:]])
