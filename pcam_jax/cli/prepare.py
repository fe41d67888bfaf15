"""``pcam-jax prepare``: build a TFDS dataset once, before training.

    pcam-jax prepare mura --manual_dir DIR [--data_dir DIR] [--skip_corrupt]
                          [--label_policy trust_csv] [--model_selection_fraction F]
    pcam-jax prepare synthetic [--config CONFIG] [--data_dir DIR]

``--config`` gives ``config.synthetic`` for the synthetic data and the defaults of
``data.model_selection_fraction`` / ``data.skip_corrupt`` for MURA (default preset: the
dataset's name). The data dir defaults as everywhere (`pcam_jax.data.resolve_data_dir`).
Prints progress, then a summary of the splits.
"""

from __future__ import annotations

from absl import app

from pcam_jax.cli import flags
from pcam_jax.data import prepare, resolve_data_dir


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in prepare.DATASETS:
        raise app.UsageError(f"usage: pcam-jax prepare {{{','.join(prepare.DATASETS)}}} [flags]; "
                             f"got {argv[1:]}")
    from pcam_jax.configs import get_config

    dataset = argv[1]
    config = flags.CONFIG.value if flags.CONFIG.value is not None else get_config(dataset)
    data_dir = resolve_data_dir(config, flags.DATA_DIR.value)
    if dataset == "mura":
        fraction, skip = flags.MODEL_SELECTION_FRACTION.value, flags.SKIP_CORRUPT.value
        builder = prepare.prepare_mura(
            flags.MANUAL_DIR.value, data_dir,
            model_selection_fraction=config.data.model_selection_fraction if fraction is None else fraction,
            skip_corrupt=config.data.skip_corrupt if skip is None else skip,
            label_policy=flags.LABEL_POLICY.value)
    else:
        builder = prepare.prepare_synthetic(config.synthetic, data_dir)
    print(prepare.summary(builder), flush=True)
