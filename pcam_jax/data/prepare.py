"""``pcam-jax prepare``: build a TFDS dataset once, before training.

    pcam-jax prepare mura --manual_dir DIR [--data_dir DIR] [--skip_corrupt]
                          [--label_policy trust_csv] [--model_selection_fraction F]
    pcam-jax prepare synthetic [--config CONFIG] [--data_dir DIR]

Hyphenated spellings (``--manual-dir``, ``--data-dir``, ...) are accepted too. ``--config`` is a
preset (synthetic, mura, tiny, base) or a config file; it gives ``config.synthetic`` for the
synthetic data and the defaults of ``data.model_selection_fraction``/``data.skip_corrupt`` for
MURA. The data dir defaults to ``config.data.data_dir``, else ``~/tensorflow_datasets`` (where
`pcam_jax.data.pipeline` looks). Prints progress, then a summary of the splits; bad input
exits non-zero with the reason (no traceback).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

DATASETS = ("mura", "synthetic")
FLAGS = flags.FLAGS


def _define(define, name: str, *args, **kwargs) -> None:
    """Defines a flag unless another command module already did (hyphenated spellings such
    as --manual-dir are rewritten to --manual_dir by `pcam_jax.cli`)."""
    if name not in FLAGS:
        define(name, *args, **kwargs)


_define(flags.DEFINE_string, "config", None,
        "Config preset or file (default: 'mura' for mura, 'synthetic' for synthetic).")
_define(flags.DEFINE_string, "data_dir", None,
        "TFDS data dir (default: config.data.data_dir, else ~/tensorflow_datasets).")
_define(flags.DEFINE_string, "manual_dir", None,
        "mura: the folder that holds MURA-v1.1/ (see pcam_jax.data.mura).")
_define(flags.DEFINE_boolean, "skip_corrupt", None,
        "mura: skip unreadable images and report them (default: config.data.skip_corrupt).")
_define(flags.DEFINE_enum, "label_policy", "error", ["error", "trust_csv"],
        "mura: a study whose CSV label disagrees with its folder stops the build ('error') or "
        "takes the CSV label with a warning ('trust_csv').")
_define(flags.DEFINE_float, "model_selection_fraction", None,
        "mura: fraction of train patients held out (default: config.data.model_selection_fraction).")


def _config(dataset: str):
    from pcam_jax.configs import get_config

    value = FLAGS.config
    if value is None or isinstance(value, str):
        return get_config(value or dataset)
    return value  # a ConfigDict, where another module defined --config as a config file


def _data_dir(config) -> str:
    return os.path.expanduser(FLAGS.data_dir or config.data.data_dir or "~/tensorflow_datasets")


def _keep_tensorflow_off_gpus() -> None:
    import tensorflow as tf  # lazily: only the data commands pay for it

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised by whoever imported it first
        pass


def prepare_mura(manual_dir, data_dir, *, model_selection_fraction: float = 0.1,
                 skip_corrupt: bool = False, label_policy: str = "error"):
    """Builds MURA with progress output; returns the builder (see `summary`)."""
    if not manual_dir:
        raise ValueError("--manual_dir is required: the folder that holds MURA-v1.1/.")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual_dir {manual_dir} does not exist or is not a folder.")
    _keep_tensorflow_off_gpus()
    from pcam_jax.data import mura

    print(f"Checking the MURA tree under {manual_dir} ...", flush=True)
    mura.check_tree(manual_dir)
    print(f"Building MURA into {data_dir} (model_selection_fraction={model_selection_fraction}, "
          f"skip_corrupt={skip_corrupt}, label_policy={label_policy}) ...", flush=True)
    return mura.prepare(manual_dir, data_dir, model_selection_fraction=model_selection_fraction,
                        skip_corrupt=skip_corrupt, label_policy=label_policy)


def prepare_synthetic(synthetic_config, data_dir):
    """Builds the synthetic radiographs with progress output; returns the builder."""
    _keep_tensorflow_off_gpus()
    from pcam_jax.data import synthetic_builder

    print(f"Building synthetic radiographs into {data_dir} ...", flush=True)
    return synthetic_builder.prepare(synthetic_config, data_dir)


def summary(builder) -> str:
    """Where the dataset went, its split sizes, and anything the build reported."""
    lines = [f"Prepared {builder.name}/{builder.builder_config.name} {builder.version} in "
             f"{builder.data_dir}", "  split              images"]
    splits = builder.info.splits
    lines += [f"  {name:<18} {splits[name].num_examples:>6}" for name in splits]
    meta = builder.info.metadata or {}
    if "num_patients" in meta:
        patients = meta["num_patients"].items()
        lines.append("  patients: " + ", ".join(f"{split} {n}" for split, n in patients))
    skipped = [p for paths in (meta.get("skipped_corrupt") or {}).values() for p in paths]
    if skipped:
        lines.append(f"  skipped {len(skipped)} unreadable images (skip_corrupt):")
        lines += [f"    {p}" for p in skipped]
    if meta.get("label_disagreements"):
        lines.append(f"  {len(meta['label_disagreements'])} studies took their CSV label over "
                     "their folder (label_policy=trust_csv):")
        lines += [f"    {d['study_id']}" for d in meta["label_disagreements"]]
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise app.UsageError(f"usage: pcam-jax prepare {{{','.join(DATASETS)}}} [flags]; "
                             f"got {argv[1:]}")
    dataset = argv[1]
    try:
        config = _config(dataset)
        data_dir = _data_dir(config)
        if dataset == "mura":
            fraction = FLAGS.model_selection_fraction
            skip = FLAGS.skip_corrupt
            builder = prepare_mura(
                FLAGS.manual_dir, data_dir,
                model_selection_fraction=(config.data.model_selection_fraction
                                          if fraction is None else fraction),
                skip_corrupt=config.data.skip_corrupt if skip is None else skip,
                label_policy=FLAGS.label_policy)
        else:
            builder = prepare_synthetic(config.synthetic, data_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"pcam-jax prepare {dataset}: {e}")
    print(summary(builder), flush=True)


if __name__ == "__main__":
    app.run(main)
