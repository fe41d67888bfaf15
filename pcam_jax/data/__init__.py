"""Data: synthetic radiographs, MURA, clinician lesion labels, and one tf.data pipeline.

The contract every part of the project relies on.

Records (what the TFDS builders store, one per image):
    image         uint8 (H, W, 1)    grayscale radiograph
    label         int64               0 = normal, 1 = abnormal
    lesion_mask   uint8 (H, W, 1)    1 inside a lesion (synthetic only; zeros where unknown)
    has_mask      bool                True when lesion_mask is a real annotation
    lesion_labelled bool              True for the few images whose masks stage 3 may train on
    path          str                 relative path (MURA: "MURA-v1.1/train/XR_.../image1.png")
    study_id      str                 images of one study share it (study-level metrics)
    patient_id    str
    body_part     str                 "XR_WRIST", ... ("SYNTHETIC" for synthetic data)
    hardware      str                 "1" implant/cast present, "0" none, "" unknown (FracAtlas,
                                      folders with a hardware column; absent from MURA/synthetic)

Splits: synthetic_xray has train, model_selection, test and heldout_labelled (abnormal
images with masks, disjoint from the rest, for choosing thresholds); mura has train,
model_selection (patient-disjoint slice of train) and valid (the official validation set,
our test set).

Batches (what `pcam_jax.data.pipeline` yields, numpy, per process):
    image     float32 (B, S, S, 1) in [0, 1]   (the model standardises internally)
    label     int32   (B,)
    mask      float32 (B, S, S) in {0, 1}      lesion mask, same geometric transform as image
    has_mask  bool    (B,)
    valid     bool    (B,)                      False on padding rows of the last eval batch
    path, study_id, body_part, hardware: object arrays of str (B,)  metadata, never sent to devices
`DEVICE_KEYS` names the numeric keys that go to the accelerator.
"""

import os

import numpy as np

DEVICE_KEYS = ("image", "label", "mask", "has_mask", "valid")
CLASS_NAMES = ("normal", "abnormal")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # TFDS's own default
# The split whose own lesion masks may choose things (IoU/Dice thresholds in `pcam-jax evaluate`,
# the few-label segmenter's checkpoint in the loop), never the test split; a dataset absent here
# (MURA, a folder) has none: its masks, if any, come from clinician label files.
HELDOUT_MASK_SPLIT = {"synthetic": "heldout_labelled", "fracatlas": "model_selection"}


def resolve_data_dir(config, data_dir: str | None = None) -> str:
    """The TFDS data directory: ``data_dir`` if given, else ``config.data.data_dir``, else
    `DEFAULT_DATA_DIR`; ``~`` expanded. The one place this default is decided."""
    return os.path.expanduser(str(data_dir or config.data.data_dir or DEFAULT_DATA_DIR))


def scorable_rows(batch) -> np.ndarray:
    """(B,) bool: the rows of a batch a map can be scored on: real (``valid``), annotated
    (``has_mask``) and with a lesion (a normal image's empty mask scores no map)."""
    lesion = np.asarray(batch["mask"]).reshape(len(batch["valid"]), -1).any(axis=1)
    return np.asarray(batch["valid"], bool) & np.asarray(batch["has_mask"], bool) & lesion


def record_features(with_hardware: bool = False):
    """The TFDS features of a record of real radiographs (MURA, a folder, FracAtlas): the
    contract above; ``hardware`` only ``with_hardware`` (MURA's stored datasets lack it).

    Images of any size, single channel (PNG, or a JPEG's own bytes); TFDS is imported only here.
    """
    import tensorflow_datasets as tfds

    text = tfds.features.Text()
    features = {
        "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        "lesion_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "has_mask": np.bool_,
        "lesion_labelled": np.bool_,
        "path": text, "study_id": text, "patient_id": text, "body_part": text,
    }
    if with_hardware:
        features["hardware"] = text
    return tfds.features.FeaturesDict(features)
