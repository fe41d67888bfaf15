"""Model selection on the host, read at each epoch's end by the loop: which checkpoint is "best".

- `evaluate`: image-level classification metrics of the model-selection split (ranked by
  ``train.best_metric``; its accuracy is stage 2's "validation" confidence source);
- `heldout_pxap`: PxAP of the decoder's map on held-out lesion masks, what a stage without a
  trained classifier (stage 4, `Stage.best_by_localisation`) is ranked by (and stage 3 with
  ``stage3.select_by="localisation"``: `Stage.ranked_by_localisation`), with the map and the
  metric `pcam-jax evaluate` scores it with (`pcam_jax.maps.postprocess`, `localisation.pxap`);
- `criterion`: what picked a stage's "best", stored in every checkpoint's meta and reported by
  `pcam-jax evaluate`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from pcam_jax import configs
from pcam_jax.data import HELDOUT_MASK_SPLIT, scorable_rows
from pcam_jax.metrics import localisation
from pcam_jax.metrics.classification import classification_metrics
from pcam_jax.training.mesh import prefetch_to_device

HELDOUT_PXAP = "heldout_pxap"   # the ranking metric of `Stage.best_by_localisation` stages
LATEST = "latest"               # ... where the run has no held-out masks: the latest checkpoint


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


def heldout_pxap(decoder_map_step: Callable, state: dict, batches: Iterable[dict], mesh) -> float:
    """PxAP of the decoder map (`steps.make_decoder_map_step`) over the scorable rows of
    ``batches`` (`pcam_jax.data.scorable_rows`): one jitted pass per batch, pooled on the host."""
    fetched = []
    for device_batch, _ in prefetch_to_device(batches, mesh):
        fetched.append({"map": decoder_map_step(state, device_batch),
                        **{k: device_batch[k] for k in ("mask", "has_mask", "valid")}})
    rows = {k: np.concatenate([_to_host(b[k]) for b in fetched]) for k in ("map", "mask", "has_mask", "valid")}
    keep = scorable_rows(rows)
    return localisation.pxap(rows["map"][keep], rows["mask"][keep])


def heldout_batches(data, config) -> tuple[list[dict] | None, int]:
    """``(batches, images)``: the held-out lesion images a `Stage.best_by_localisation` stage is
    ranked on, read once (at most ``train.heldout_selection_images``) and kept on the host;
    ``(None, 0)`` where the run has none (no held-out mask split, or no lesion in it)."""
    batches = data.heldout_mask_batches(int(config.train.heldout_selection_images))
    batches = list(batches) if batches is not None else []
    mine = np.array([sum(int(scorable_rows(b).sum()) for b in batches)], np.int32)   # this process's share
    images = int(_to_host(mine).sum())   # of every process: all agree on the criterion
    return (batches, images) if images else (None, 0)


def ranking(spec, config) -> tuple[str, str]:
    """(metric, mode) stage ``spec``'s checkpoints are ranked by: ``train.best_metric`` /
    ``best_mode``, or for a stage `Stage.ranked_by_localisation` `HELDOUT_PXAP`, max."""
    if spec.ranked_by_localisation(config):
        return HELDOUT_PXAP, "max"
    return str(config.train.best_metric), str(config.train.best_mode)


def criterion(spec, config, heldout_images: int = 0) -> dict:
    """What ranks stage ``spec``'s checkpoints: {"metric", "mode", "split", "images"}.

    Stages with a trained classifier: ``train.best_metric`` on model_selection. A stage
    `Stage.ranked_by_localisation`: `HELDOUT_PXAP` on the dataset's held-out mask split
    (``heldout_images`` images), or `LATEST` where it has none."""
    metric, mode = ranking(spec, config)
    if not spec.ranked_by_localisation(config):
        return {"metric": metric, "mode": mode, "split": "model_selection", "images": None}
    if not heldout_images:
        return {"metric": LATEST, "mode": mode, "split": None, "images": 0}
    return {"metric": metric, "mode": mode, "split": HELDOUT_MASK_SPLIT[str(config.data.dataset)],
            "images": int(heldout_images)}


def recorded(meta) -> dict:
    """The `criterion` that ranked the checkpoints of the stage whose checkpoint meta is ``meta``;
    a checkpoint written before criteria were stored was ranked by its config's
    ``train.best_metric`` on model_selection, whatever its stage."""
    if "selection" in meta:
        return dict(meta["selection"])
    train = configs.complete(meta["config"]).train
    return {"metric": str(train.best_metric), "mode": str(train.best_mode), "split": "model_selection", "images": None}


def describe(chosen: dict) -> str:
    """One line for logs and reports: ``"heldout_pxap (max) on 40 heldout_labelled images"``."""
    if chosen["metric"] == LATEST:
        return "recency: the latest (no held-out lesion masks to rank it on)"
    where = f"{chosen['images']} {chosen['split']} images" if chosen.get("images") else chosen["split"]
    return f"{chosen['metric']} ({chosen['mode']}) on {where}"
