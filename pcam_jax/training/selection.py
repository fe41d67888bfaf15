"""Model selection on the host: image-level classification metrics of the model-selection split,
read at each epoch's end by the loop (its accuracy is stage 2's "validation" confidence source)."""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from pcam_jax.metrics.classification import classification_metrics
from pcam_jax.training.mesh import prefetch_to_device


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(eval_step: Callable, state: dict, batches: Iterable[dict], mesh) -> dict[str, float]:
    """Image-level classification metrics over every valid example of ``batches``."""
    probs, labels, valid = [], [], []
    for device_batch, _ in prefetch_to_device(batches, mesh):
        out = eval_step(state, device_batch)
        probs.append(out["probs"])
        labels.append(device_batch["label"])
        valid.append(device_batch["valid"])
    if not probs:
        raise ValueError("the model-selection split gave no batches: it is empty")
    keep = np.concatenate([_to_host(v) for v in valid]).astype(bool)
    p = np.concatenate([_to_host(x) for x in probs])[keep]
    y = np.concatenate([_to_host(x) for x in labels])[keep]
    metrics = classification_metrics(p, y)
    # Scalars only (the counts and the reason an AUROC is undefined stay out of the logs).
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
