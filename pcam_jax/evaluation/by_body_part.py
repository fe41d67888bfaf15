"""Localisation per body part, next to each body part's study-level classification (MURA, folders).

`localisation_per_group` scores every map method within each body part with the threshold the
method was given overall (chosen on the held-out labelled images, never per group);
`table` lays out what the report shows: a row per body part with the last stage's
study-level kappa and, for the headline maps, the pointing game and PxAP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pcam_jax.metrics import localisation

# The maps a reader compares (the paper's Figure 2), in this order, where present.
HEADLINE_MAPS = ("stage1/cam", "stage1/positive_cam", "stage2/positive_cam", "stage3/decoder")
COLUMNS = (("pointing_game", "PG"), ("pxap", "PxAP"))


def localisation_per_group(maps: Mapping[str, np.ndarray], masks: np.ndarray, groups: np.ndarray,
                           taus: Mapping[str, float], tolerance: float,
                           box_ious: Mapping[str, np.ndarray] | None = None) -> dict[str, dict[str, dict]]:
    """{method: {group: localisation_metrics}} for maps (N, H, W), masks (N, H, W), groups (N,).

    ``box_ious``: {method: `localisation.best_box_iou` of its maps (N, T)} where already computed
    (MaxBoxAccV2's boxes are most of the cost; a group's are its rows)."""
    groups = np.asarray(groups).astype(str)
    if len(groups) != len(masks):
        raise ValueError(f"{len(groups)} body parts for {len(masks)} masks")
    out = {}
    for name, method_maps in maps.items():
        ious = (box_ious or {}).get(name)
        out[name] = {str(g): localisation.localisation_metrics(
            method_maps[groups == g], masks[groups == g], tau=float(taus[name]), tolerance=tolerance,
            box_ious=None if ious is None else ious[groups == g])
            for g in np.unique(groups)}  # a handful of body parts
    return out


def _study_kappa(classification: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(model, {group: study-level kappa}) of the last model with per-group metrics."""
    for model in reversed(list(classification)):
        per_group = classification[model].get("per_group") or {}
        if per_group:
            return model, {g: m.get("cohen_kappa") for g, m in per_group.items()}
    return "", {}


def table(metrics: Mapping[str, Any]):
    """``(rows, columns, headers)`` of the per-body-part table (`pcam_jax.evaluation.report`
    renders it), or None without per-group localisation: body part x (study kappa of the last
    stage, labelled images, PG and PxAP per headline map)."""
    per_group = metrics.get("localisation_per_group") or {}
    if not per_group:
        return None
    model, kappas = _study_kappa(metrics.get("classification") or {})
    names = [n for n in HEADLINE_MAPS if n in per_group] or list(per_group)[:4]
    groups = sorted({g for by_group in per_group.values() for g in by_group} | set(kappas))
    columns = ["kappa", "n_masks"]
    headers = {"kappa": f"{model} study kappa", "n_masks": "images with mask"}
    rows = {g: {"kappa": kappas.get(g)} for g in groups}
    for name in names:
        for key, short in COLUMNS:
            column = f"{name}:{key}"
            columns.append(column)
            headers[column] = f"{name} {short}"
            for g in groups:
                entry = per_group[name].get(g, {})
                rows[g][column] = entry.get(key)
                rows[g].setdefault("n_masks", entry.get("n_images", 0))
    return rows, columns, headers


NOTE = ("Kappa is per study (mean of the images' probabilities, abnormal if > 0.5); PG (pointing "
        "game) and PxAP are scored on the labelled test images of each body part, with each "
        "method's overall threshold. n/a: no labelled image of that body part.")
