"""Host batches per the `pcam_jax.data` contract, for tests that need no dataset."""

import numpy as np


def fake_batch(n, size=32, seed=0, valid_rows=None):
    """n images, half abnormal, each abnormal one with a bright 8x8 square lesion and its mask.

    ``valid_rows``: only the first that many rows are valid (as in a padded eval batch).
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int32)
    images = rng.uniform(0.0, 0.5, size=(n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size), np.float32)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 8, size=2)
        masks[i, y:y + 8, x:x + 8] = 1.0
        images[i, y:y + 8, x:x + 8, 0] += 0.5
    valid = np.ones(n, bool) if valid_rows is None else np.arange(n) < valid_rows
    return dict(image=images, label=labels, mask=masks, has_mask=labels == 1, valid=valid,
                path=np.array([f"img{i}.png" for i in range(n)], object),
                study_id=np.array([f"s{i}" for i in range(n)], object))
