"""``pcam-jax prepare``: build a TFDS dataset once, before training.

    pcam-jax prepare mura --manual_dir DIR [--data_dir DIR] [--skip_corrupt]
                          [--label_policy trust_csv] [--model_selection_fraction F]
    pcam-jax prepare folder --folder_root DIR [--folder_csv labels.csv] [--data_dir DIR]
                            [--skip_corrupt] [--model_selection_fraction F] [--test_fraction F]
    pcam-jax prepare fracatlas --manual_dir DIR [--data_dir DIR] [--model_selection_fraction F]
    pcam-jax prepare synthetic [--config CONFIG] [--data_dir DIR]
    ... [--uint8_cache | --nouint8_cache]

``--uint8_cache`` (default: when ``config.data.augment_on`` is ``device``) then stores the train
split once as uint8 at ``config.data.image_size`` / ``config.data.resize``
(`pcam_jax.data.uint8_cache`, under the data dir), with a progress bar, and prints where it is
and its size; training with the same size and resize mode reads it without rebuilding, a
different size or resize mode is another cache.

``--config`` gives ``config.synthetic`` for the synthetic data and the defaults of
``data.model_selection_fraction`` / ``data.skip_corrupt`` (and ``data.folder_*``) for MURA and
folders (default preset: the dataset's name, ``base`` for folders). The data dir defaults as
everywhere (`pcam_jax.data.resolve_data_dir`). Prints progress, then a summary of the splits.
"""

from __future__ import annotations

from absl import app

from pcam_jax.cli import flags
from pcam_jax.data import prepare, resolve_data_dir

DATASETS = prepare.DATASETS + ("folder",)


def _or(value, default):
    return default if value is None else value


def prepare_uint8_cache(config, data_dir, split: str = "train"):
    """The uint8 cache of ``split`` for ``config`` (image size, resize mode), built now with a
    progress bar unless a current one is there; returns the `uint8_cache.SplitCache`
    (``built`` says which). Reads the records exactly as training does
    (`pcam_jax.data.source.PipelineData`: clinician lesion labels joined). Here, not in
    `pcam_jax.data.prepare`: the data package must not import training."""
    from pcam_jax import runtime

    runtime.tensorflow()  # before TFDS touches TensorFlow
    from pcam_jax.training import loop

    print(f"Storing the {split} split as uint8 at {int(config.data.image_size)} px "
          f"(resize={config.data.resize}) ...", flush=True)
    return loop.PipelineData(config, data_dir).uint8_split(split, progress=True)


def prepare_folder(config, data_dir):
    """`pcam_jax.data.folder.prepare` with the flags over config.data.folder_*."""
    root = flags.FOLDER_ROOT.value or config.data.folder_root
    if not root:
        raise ValueError("--folder_root is required: the folder of radiographs that holds the labels CSV")
    from pcam_jax import runtime

    runtime.tensorflow()  # before TFDS touches TensorFlow
    from pcam_jax.data import folder

    print(f"Building the radiograph folder {root} into {data_dir} ...", flush=True)
    return folder.prepare(
        root, data_dir, csv_name=_or(flags.FOLDER_CSV.value, config.data.folder_csv),
        model_selection_fraction=_or(flags.MODEL_SELECTION_FRACTION.value, config.data.model_selection_fraction),
        test_fraction=_or(flags.TEST_FRACTION.value, config.data.folder_test_fraction),
        skip_corrupt=_or(flags.SKIP_CORRUPT.value, config.data.skip_corrupt))


def dataset_config(config, dataset: str, data_dir: str):
    """A copy of ``config`` that reads the dataset just prepared (the flags over the config's
    fields, as the build took them): what the uint8 cache is built from."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.dataset, config.data.data_dir = dataset, data_dir
        if dataset in ("mura", "folder", "fracatlas"):
            config.data.model_selection_fraction = _or(flags.MODEL_SELECTION_FRACTION.value,
                                                       config.data.model_selection_fraction)
        if dataset == "mura":
            config.data.skip_corrupt = _or(flags.SKIP_CORRUPT.value, config.data.skip_corrupt)
        if dataset == "folder":
            config.data.folder_root = flags.FOLDER_ROOT.value or config.data.folder_root
            config.data.folder_csv = _or(flags.FOLDER_CSV.value, config.data.folder_csv)
            config.data.folder_test_fraction = _or(flags.TEST_FRACTION.value, config.data.folder_test_fraction)
    return config


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise app.UsageError(f"usage: pcam-jax prepare {{{','.join(DATASETS)}}} [flags]; got {argv[1:]}")
    from pcam_jax.configs import get_config

    dataset = argv[1]
    config = (flags.CONFIG.value if flags.CONFIG.value is not None
              else get_config(dataset if dataset in prepare.DATASETS else "base"))
    data_dir = resolve_data_dir(config, flags.DATA_DIR.value)
    if dataset == "mura":
        builder = prepare.prepare_mura(
            flags.MANUAL_DIR.value, data_dir,
            model_selection_fraction=_or(flags.MODEL_SELECTION_FRACTION.value, config.data.model_selection_fraction),
            skip_corrupt=_or(flags.SKIP_CORRUPT.value, config.data.skip_corrupt),
            label_policy=flags.LABEL_POLICY.value)
    elif dataset == "fracatlas":
        builder = prepare.prepare_fracatlas(
            flags.MANUAL_DIR.value, data_dir,
            model_selection_fraction=_or(flags.MODEL_SELECTION_FRACTION.value, config.data.model_selection_fraction))
    elif dataset == "folder":
        builder = prepare_folder(config, data_dir)
    else:
        builder = prepare.prepare_synthetic(config.synthetic, data_dir)
    print(prepare.summary(builder), flush=True)
    build_cache = flags.UINT8_CACHE.value
    if build_cache is None:
        build_cache = config.data.augment_on == "device"
    if build_cache:
        cache = prepare_uint8_cache(dataset_config(config, dataset, data_dir), data_dir)
        print(prepare.uint8_summary(cache), flush=True)
    else:
        print("uint8 cache: not built (data.augment_on=host decodes on the fly; --uint8_cache "
              "or --config.data.augment_on=device builds it)", flush=True)
