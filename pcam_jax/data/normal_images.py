"""Normal images in stage 3's labelled batch: lesion-free examples that need no clinician.

A normal radiograph (label 0) has no lesion, so its lesion mask is empty by definition: any
dataset with image labels can add such images to L3 at no labelling cost. Without them the
labelled few are all abnormal, and L3 never sees a normal limb: lesion-like structures there
(hardware, a cast) are never called "not a lesion" on their own. On the synthetic demo they do
little alone (a few hardware pixels weigh next to nothing in a mean over the background); with
`losses.hard_background_term` (``config.stage3.hard_background``), which makes those pixels count,
they lower the decoder's response to hardware further (docs/RESULTS.md section 8). ``config.stage3.normal_images_per_batch = K``
appends K normal train images, mask emptied, to every labelled batch: both input paths
(`pcam_jax.data.pipeline`, `pcam_jax.data.uint8_cache`) draw them with
``labelled_batches(..., normal=True)``, the loop's data source joins them with `append`.
"""

from __future__ import annotations

import numpy as np

SALT = 3   # their own random stream: drawing them moves no other stream's order


def per_process(config, process_count: int = 1) -> int:
    """K // process_count, the normal images each process appends; 0 when the option is off."""
    k = int(config.stage3.normal_images_per_batch)
    if k < 0 or k % process_count:
        raise ValueError(f"config.stage3.normal_images_per_batch={k} must be 0 or a positive multiple of the "
                         f"number of processes ({process_count})")
    return k // process_count


def append(labelled: dict, normal: dict) -> dict:
    """The labelled batch with the normal batch's rows after it, their masks empty and counted.

    ``has_mask`` becomes True on the normal rows: an empty mask is what a normal image's
    annotation is (MURA-like records carry ``has_mask=False`` only because nobody drew one)."""
    if np.any(np.asarray(normal["label"]) != 0):
        raise ValueError("normal_images.append: the normal batch holds an abnormal image")
    normal = dict(normal, mask=np.zeros_like(normal["mask"]), has_mask=np.ones_like(normal["has_mask"]))
    return {key: np.concatenate([labelled[key], normal[key]]) for key in labelled}
