"""The synthetic dataset of config.synthetic: its checks and which image goes in which split.

The pictures are `pcam_jax.data.synthetic.generate_for_config`'s; this module decides the
splits (disjoint index ranges, exact class balance, the lesion-labelled few) that the TFDS
builder `pcam_jax.data.synthetic_builder` stores.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pcam_jax.data.synthetic import lesion_level_multipliers

SPLITS = ("train", "model_selection", "test", "heldout_labelled")


class PlannedImage(NamedTuple):
    index: int
    label: int
    lesion_labelled: bool


def check_config(c) -> None:
    """Clear errors for settings that cannot make a dataset."""
    for field in ("image_size", "num_train", "num_model_selection", "num_test", "num_labelled",
                  "num_heldout_labelled", "seed", "abnormal_prevalence", "marker_prob_abnormal",
                  "marker_prob_normal", "hardware_prob_abnormal", "hardware_prob_normal"):
        if field not in c:
            raise ValueError(f"config.synthetic has no field {field!r}; see pcam_jax/configs/base.py")
    for field in ("num_train", "num_model_selection", "num_test", "num_labelled", "num_heldout_labelled"):
        if int(c[field]) < 0:
            raise ValueError(f"config.synthetic.{field} must be >= 0, got {c[field]}")
    for field in ("abnormal_prevalence", "marker_prob_abnormal", "marker_prob_normal",
                  "hardware_prob_abnormal", "hardware_prob_normal"):
        if not 0.0 <= float(c[field]) <= 1.0:
            raise ValueError(f"config.synthetic.{field} must be a probability in [0, 1], got {c[field]}")
    if int(c.image_size) < 16:
        raise ValueError(f"config.synthetic.image_size must be >= 16, got {c.image_size}")
    lesion_level_multipliers(c.lesion_level)


def make_split_plan(synthetic_config) -> dict[str, list[PlannedImage]]:
    """Which image indices, labels and lesion labels each split holds.

    Splits take consecutive, disjoint index ranges in the order of `SPLITS`. Within train,
    model_selection and test, exactly round(abnormal_prevalence * n) images are abnormal, at
    positions shuffled by the seed; `num_labelled` of train's abnormal images are lesion-labelled.
    heldout_labelled holds `num_heldout_labelled` abnormal images, all lesion-labelled (their
    masks choose thresholds; stage 3 trains on train's labelled images only).
    """
    c = synthetic_config
    check_config(c)
    sizes = dict(train=int(c.num_train), model_selection=int(c.num_model_selection),
                 test=int(c.num_test), heldout_labelled=int(c.num_heldout_labelled))
    plan, start = {}, 0
    for split_number, split in enumerate(SPLITS):
        n = sizes[split]
        rng = np.random.default_rng(np.random.SeedSequence([int(c.seed), 0x5EED, split_number]))
        if split == "heldout_labelled":
            labels, labelled = np.ones(n, int), np.ones(n, bool)
        else:
            n_abnormal = int(round(float(c.abnormal_prevalence) * n))
            labels = rng.permutation(np.repeat([1, 0], [n_abnormal, n - n_abnormal]))
            labelled = np.zeros(n, bool)
            if split == "train":
                if int(c.num_labelled) > n_abnormal:
                    raise ValueError(
                        f"config.synthetic.num_labelled={c.num_labelled} exceeds the {n_abnormal} "
                        f"abnormal train images (num_train={n}, abnormal_prevalence="
                        f"{c.abnormal_prevalence}); lower num_labelled or raise num_train")
                chosen = rng.choice(np.flatnonzero(labels), int(c.num_labelled), replace=False)
                labelled[chosen] = True
        plan[split] = [PlannedImage(start + i, int(labels[i]), bool(labelled[i])) for i in range(n)]
        start += n
    return plan
