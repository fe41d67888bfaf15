"""Figures for the evaluation report: the Figure-2 grid, PR curves, a confusion matrix.

Functions take numpy arrays and return a `matplotlib.figure.Figure` built without pyplot
(no global state, no window, nothing to close); save it with `fig.savefig(path, dpi=...)`.
Images are float in [0, 1], (H, W), (H, W, 1) or (H, W, 3); maps are (H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from pcam_jax.maps.overlays import DEFAULT_CMAP, blend, image_rgb

_MASK_RGB = np.array([1.0, 0.15, 0.15])


def _mask_rgb(image, mask) -> np.ndarray:
    rgb = image_rgb(image)
    mask = np.asarray(mask, dtype=np.float64)[..., None]
    return (1.0 - 0.5 * mask) * rgb + 0.5 * mask * _MASK_RGB


def _outline(ax, mask) -> None:
    mask = np.asarray(mask)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)


def figure2(images, masks, maps: Mapping[str, np.ndarray], titles: Sequence[str] | None = None, *,
            alpha: float = 0.5, cmap: str = DEFAULT_CMAP, panel_size: float = 2.2) -> Figure:
    """The paper's Figure 2 done properly: one row per image, one shared colour scale.

    Columns: the image, the lesion mask (red), then one column per map method with the map
    overlaid on the image on the fixed scale 0..1 and the lesion outlined in white. One colour
    bar serves every map panel.

    Args:
      images: (N, H, W) or (N, H, W, C) in [0, 1].
      masks: (N, H, W) {0, 1} lesion masks (all zero for a normal image).
      maps: {method name: (N, H, W) map in [0, 1]}, in column order.
      titles: optional N row labels, e.g. "abnormal, p = 0.93".

    Returns:
      Figure with N * (2 + len(maps)) image axes plus one colour-bar axes.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    n = images.shape[0]
    if masks.shape[0] != n or masks.shape[1:3] != images.shape[1:3]:
        raise ValueError(f"masks have shape {masks.shape}, images {images.shape}: expected (N, H, W) for each image.")
    maps = {name: np.asarray(m) for name, m in maps.items()}
    for name, m in maps.items():
        if m.shape != masks.shape:
            raise ValueError(f"map {name!r} has shape {m.shape}; expected {masks.shape} (resized to the images).")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images.")
    columns = ["image", "lesion mask", *maps]
    fig = Figure(figsize=(panel_size * len(columns) + 1.0, panel_size * n + 0.4), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for row in range(n):
        panels = [image_rgb(images[row]), _mask_rgb(images[row], masks[row])]
        panels += [blend(images[row], m[row], alpha, cmap) for m in maps.values()]
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel, interpolation="nearest")
            if col >= 2:
                _outline(ax, masks[row])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row], fontsize=9)
    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), ax=axes[:, 2:] if maps else axes,
                            shrink=0.8, pad=0.01)
    colorbar.set_label("map value (min-max normalised per image)")
    return fig


def pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
              average_precision: Mapping[str, float] | None = None,
              title: str = "Pixel precision-recall (all test pixels pooled)") -> Figure:
    """One precision-recall curve per method on one axes.

    Args:
      curves: {method: (precision (T,), recall (T,))}, e.g. from
        `localisation.pixel_precision_recall`; NaN precision points are skipped.
      average_precision: optional {method: PxAP} shown in the legend.
    """
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, (precision, recall) in curves.items():
        precision, recall = np.asarray(precision, float), np.asarray(recall, float)
        if precision.shape != recall.shape:
            raise ValueError(f"{name!r}: precision {precision.shape} and recall {recall.shape} differ in shape.")
        keep = np.isfinite(precision)
        label = name if average_precision is None or name not in average_precision else (
            f"{name} (PxAP {average_precision[name]:.3f})")
        ax.plot(recall[keep], precision[keep], label=label, linewidth=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of lesion pixels found)")
    ax.set_ylabel("precision (share of flagged pixels in a lesion)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower left")
    return fig


def confusion_matrix_figure(labels, predictions, class_names: Sequence[str] = ("normal", "abnormal"),
                            title: str = "Confusion matrix") -> Figure:
    """Counts of true (rows) against predicted (columns) classes, each cell with its row share."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    predictions = np.asarray(predictions).astype(np.int64).ravel()
    k = len(class_names)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions.")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= k):
            raise ValueError(f"{name} must be class indices in [0, {k}) for classes {list(class_names)}.")
    counts = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(row_totals, 1)
    fig = Figure(figsize=(1.6 * k + 1.6, 1.4 * k + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n({shares[i, j]:.0%})", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=10)
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return fig


def cascade_figure(images, maps, step_names: Sequence[str], *, method: str = "", scores=None,
                   alpha: float = 0.5, cmap: str = DEFAULT_CMAP, panel_size: float = 1.8) -> Figure:
    """Cascading randomisation of one method (`pcam_jax.trust.sanity.cascading_randomisation`).

    Rows are images; columns are the image, then the method's map after each step (the trained
    model first, then cumulatively more layers re-initialised from the top), on one 0..1 scale.

    Args:
      images: (N, H, W) or (N, H, W, C) in [0, 1].
      maps: (S + 1, N, H, W) in [0, 1], e.g. ``result["maps"][method]``.
      step_names: S + 1 column titles, e.g. ``result["steps"]``.
      method: named in the figure's title.
      scores: optional (S + 1, N) similarity to the trained model's map (e.g. SSIM), printed
        under each map panel.
    """
    images = np.asarray(images)
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != images.shape[0] or maps.shape[2:] != images.shape[1:3]:
        raise ValueError(f"maps must be (steps, N, H, W) for images {images.shape}; got {maps.shape}.")
    if len(step_names) != maps.shape[0]:
        raise ValueError(f"got {len(step_names)} step names for {maps.shape[0]} steps of maps.")
    if scores is not None and np.shape(scores) != maps.shape[:2]:
        raise ValueError(f"scores must be (steps, N) = {maps.shape[:2]}; got {np.shape(scores)}.")
    n, columns = images.shape[0], ["image", *step_names]
    fig = Figure(figsize=(panel_size * len(columns) + 1.0, panel_size * n + 0.6), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for row in range(n):
        panels = [image_rgb(images[row])] + [blend(images[row], m[row], alpha, cmap) for m in maps]
        for col, (ax, panel) in enumerate(zip(axes[row], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if scores is not None and col >= 1:
                ax.set_xlabel(f"{float(np.asarray(scores)[col - 1, row]):.2f}", fontsize=8)
    fig.suptitle(f"Cascading randomisation{': ' + method if method else ''} (left to right: more layers "
                 "re-initialised)" + (", similarity to the trained model's map below" if scores is not None else ""),
                 fontsize=10)
    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), ax=axes[:, 1:], shrink=0.8, pad=0.01)
    colorbar.set_label("map value (min-max normalised per image)")
    return fig
