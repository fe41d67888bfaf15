"""TFDS builder `synthetic_xray`: the synthetic radiographs of `pcam_jax.data.synthetic` on disk.

Records follow the contract in `pcam_jax.data` (image and lesion_mask (S, S, 1) uint8, label,
has_mask, lesion_labelled, path, study_id, patient_id, body_part); splits are train,
model_selection, test and heldout_labelled, as planned by `synthetic_splits.make_split_plan`.

The builder is parameterised by `config.synthetic`: each distinct setting gets its own
BuilderConfig, named by a short hash of the settings and the generator version, so datasets
made with different settings live side by side in one data_dir and never mix:

    builder = synthetic_builder.prepare(config.synthetic, data_dir)  # builds once, then reuses
    train = builder.as_dataset(split="train")

Nothing is downloaded. TensorFlow is kept off the GPUs (the accelerator belongs to JAX).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as py_logging
import os

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from pcam_jax import runtime
from pcam_jax.data import CLASS_NAMES
from pcam_jax.data import synthetic, synthetic_splits

# Fields of config.synthetic that change the records (all of them, today).
SETTINGS_FIELDS = (
    "image_size", "num_train", "num_model_selection", "num_test", "abnormal_prevalence",
    "marker_prob_abnormal", "marker_prob_normal", "hardware_prob_abnormal", "hardware_prob_normal",
    "num_labelled", "num_heldout_labelled", "seed", "lesion_level")

# (A config stored in an older checkpoint that lacks a field is completed by
# `pcam_jax.configs.complete` before it gets here: with the value that rebuilds its data.)


def settings_of(synthetic_config) -> dict:
    """The builder-relevant settings as a plain JSON-able dict (clear error on a missing field)."""
    missing = [f for f in SETTINGS_FIELDS if f not in synthetic_config]
    if missing:
        raise ValueError(f"config.synthetic lacks {missing}; see pcam_jax/configs/base.py for the fields")
    settings = {}
    for field in SETTINGS_FIELDS:
        value = synthetic_config[field]
        settings[field] = (value if isinstance(value, str) else
                           float(value) if isinstance(value, float) else int(value))
    return settings


def config_name(synthetic_config) -> str:
    """BuilderConfig name: image size plus a hash of every setting and the generator version."""
    settings = settings_of(synthetic_config)
    # The level's multipliers too: retuning a level must never reuse a dataset built before.
    multipliers = synthetic.lesion_level_multipliers(settings["lesion_level"])
    blob = json.dumps(dict(settings, generator=synthetic.GENERATOR_VERSION, lesion_multipliers=multipliers),
                      sort_keys=True)
    return f"s{settings['image_size']}_{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclasses.dataclass(eq=False)
class SyntheticXrayConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying the settings (JSON of `settings_of`) it was made from."""

    settings_json: str = "{}"

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)


def make_builder_config(synthetic_config) -> SyntheticXrayConfig:
    settings = settings_of(synthetic_config)
    return SyntheticXrayConfig(
        name=config_name(synthetic_config),
        description=(f"synthetic radiographs, generator {synthetic.GENERATOR_VERSION}, settings "
                     + json.dumps(settings, sort_keys=True)),
        settings_json=json.dumps(settings, sort_keys=True))


class SyntheticXray(tfds.core.GeneratorBasedBuilder):
    """Synthetic radiographs with exact lesion masks (see `pcam_jax.data.synthetic`)."""

    name = "synthetic_xray"
    VERSION = tfds.core.Version(synthetic.GENERATOR_VERSION)
    RELEASE_NOTES = {"1.0.0": "First generator."}

    def _info(self) -> tfds.core.DatasetInfo:
        size = int(self.builder_config.settings["image_size"])
        return self.dataset_info_from_configs(
            description=self.builder_config.description,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "lesion_mask": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
                "has_mask": tfds.features.Scalar(dtype=np.bool_),
                "lesion_labelled": tfds.features.Scalar(dtype=np.bool_),
                "path": tfds.features.Text(),
                "study_id": tfds.features.Text(),
                "patient_id": tfds.features.Text(),
                "body_part": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        plan = synthetic_splits.make_split_plan(ml_collections.ConfigDict(self.builder_config.settings))
        return {split: self._generate_examples(split, planned) for split, planned in plan.items()}

    def _generate_examples(self, split, planned):
        settings = ml_collections.ConfigDict(self.builder_config.settings)
        for item in planned:
            yield item.index, record(settings, split, item)


def record(synthetic_config, split: str, item: synthetic_splits.PlannedImage) -> dict:
    """The stored record of one planned image (numpy arrays; what the builder writes)."""
    ex = synthetic.generate_for_config(synthetic_config, item.index, item.label)
    path = f"synthetic/{split}/{item.index:06d}"
    return {
        "image": ex["image"][..., None],
        "label": item.label,
        "lesion_mask": ex["lesion_mask"][..., None],
        "has_mask": True,
        "lesion_labelled": item.lesion_labelled,
        "path": path,
        "study_id": path,
        "patient_id": path,
        "body_part": "SYNTHETIC",
    }


def builder(synthetic_config, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """The `synthetic_xray` builder for these settings, reading and writing under data_dir."""
    runtime.tensorflow()  # before TFDS touches TensorFlow
    synthetic_splits.check_config(synthetic_config)  # clear errors before TFDS sees anything
    # Every config here is "custom" (named by its settings); TFDS warns about that each time.
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    absl_logger.setLevel(py_logging.ERROR)
    try:
        return SyntheticXray(config=make_builder_config(synthetic_config), data_dir=os.fspath(data_dir))
    finally:
        absl_logger.setLevel(level)


def prepare(synthetic_config, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Builds the dataset under data_dir unless already there; returns the builder. Idempotent."""
    b = builder(synthetic_config, data_dir)
    if not b.is_prepared():
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return b
