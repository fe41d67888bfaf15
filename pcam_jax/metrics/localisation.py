"""Localisation metrics of saliency maps against lesion masks, vectorised in numpy.

Inputs everywhere (docs/METHOD.md section 4):
    maps   (N, H, W) float in [0, 1], min-max normalised per image and resized to the image;
    masks  (N, H, W) {0, 1} lesion masks of the same images.

Metrics, each a share in [0, 1] (wsolevaluation reports percentages; we do not):
- pointing game: the arg-max pixel (first in row-major order on ties) lies within `tolerance`
  pixels (Euclidean) of a mask pixel, i.e. inside the mask dilated by a closed disk of radius
  `tolerance`. Computed exactly as min over mask pixels of the squared distance to the arg-max.
- energy pointing game / relevance mass: sum(map * mask) / sum(map); 0 for an all-zero map.
- IoU and Dice of `map >= tau` with the mask, per image, then averaged over images.
- PxAP (Choe et al., CVPR 2020; wsolevaluation `MaskEvaluator`): pixels of all images pooled;
  for each threshold t of the grid plus 1.0, precision and recall of `score >= t`; AP is
  sum_i precision_i * (recall_i - recall_{i-1}) over thresholds in decreasing order, from
  recall 0.
- MaxBoxAccV2 (wsolevaluation `BoxEvaluator` with multi_contour_eval): for each threshold t,
  the boxes a thresholded map proposes (`boxes.candidate_boxes`, every threshold at once by
  `boxes.wsolevaluation_boxes_all_thresholds`); an image is correct at
  (t, delta) when its best box (highest IoU with any ground-truth box) has IoU >= delta;
  ground-truth boxes are the inclusive boxes of the mask's 8-connected components.
  MaxBoxAcc(delta) is the max over t of the share of correct images; V2 is its mean over
  delta in {0.3, 0.5, 0.7}.

Two conventions (`convention=`), both with inclusive (+1) pixel counting in the box IoU:
- "wsolevaluation" (default; the numbers of published tables): wsolevaluation's boxes exactly,
  i.e. uint8 maps thresholded with `>` relative to their maximum, a box for every contour
  including the holes of a component, boxes one pixel past the component at the bottom and
  right (cv2.boundingRect used as inclusive), a one-pixel box at (0, 0) when nothing is
  foreground (`boxes` describes each step). PxAP drops the pixels scoring below the grid's
  lowest threshold (np.histogram ignores them there), so recall reaches 1 at that threshold.
  A perfect box prediction scores IoU < 1 here (a 4x5 box: 20/30), hence 100/100/0.
- "clean": `map >= t` on the float map, exact inclusive component extents, no hole boxes, no
  box for an empty threshold; PxAP's recall counts every lesion pixel, so a grid that does
  not start at 0 leaves recall below 1.
On the default grid, arange(0, 1, 0.01), both conventions give the same PxAP.

Images whose mask is empty (normal images) are excluded by `localisation_metrics` and counted.
Thresholds (`tau`) must be chosen on the held-out labelled split with `choose_threshold`,
never on the test split.
"""

from __future__ import annotations

import numpy as np

from pcam_jax.metrics import boxes
from pcam_jax.metrics.boxes import CONVENTIONS, box_iou, check_convention  # noqa: F401  (re-exported)

# wsolevaluation's threshold grid, arange(0, 1, cam_curve_interval), unrounded: its uint8
# cut-offs int(t * max) depend on the last bit of t. 0.01 keeps MaxBoxAcc fast.
DEFAULT_THRESHOLDS = np.arange(0.0, 1.0, 0.01)
DEFAULT_CONVENTION = "wsolevaluation"
DEFAULT_TAUS = np.round(np.arange(0.05, 1.0, 0.05), 6)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
# Voxels labelled in one scipy call by `max_box_accuracy`, convention "clean" (images x thresholds x H x W).
_LABEL_CHUNK_VOXELS = 1 << 24


def check_maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Validates shapes and ranges; returns (maps float64 (N, H, W), masks bool (N, H, W))."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W); got shape {maps.shape}. Squeeze any channel axis.")
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks have shape {masks.shape} but maps have {maps.shape}: resize the maps to the "
            "image (and mask) size before scoring them.")
    if maps.size and (not np.all(np.isfinite(maps)) or maps.min() < -1e-6 or maps.max() > 1 + 1e-6):
        raise ValueError(
            f"maps must be finite and in [0, 1] (min {np.nanmin(maps):.4g}, max {np.nanmax(maps):.4g}): "
            "min-max normalise each map first.")
    if not np.all((masks == 0) | (masks == 1)):
        raise ValueError(f"masks must be binary {{0, 1}}; found values {np.unique(masks)[:6].tolist()}.")
    return np.clip(maps, 0.0, 1.0), masks.astype(bool)


REFERENCE_TOLERANCE, REFERENCE_SIZE = 15.0, 320  # the usual pointing-game tolerance, meant for ~224-320 px


def pointing_tolerance(image_size: int, tolerance: float | None = None) -> float:
    """``tolerance`` pixels if given (>= 0), else 15 px scaled to the image: ``15 * size / 320``.

    A fixed 15 px is 12% of a 128 px image's width and flatters every map there.
    """
    if tolerance is not None and float(tolerance) >= 0:
        return float(tolerance)
    return REFERENCE_TOLERANCE * float(image_size) / REFERENCE_SIZE


def pointing_game(maps, masks, tolerance: float = 15) -> np.ndarray:
    """Per-image hit (N,) bool: the arg-max pixel lies in the mask dilated by a disk of radius `tolerance`."""
    if not float(tolerance) >= 0:  # a config's -1 ("scaled to the image") would silently mean 1 px here
        raise ValueError(f"pointing_game: tolerance is a distance in pixels >= 0, got {tolerance!r}; resolve "
                         "config.eval.pointing_tolerance with pointing_tolerance(image_size, tolerance) first")
    maps, masks = check_maps_and_masks(maps, masks)
    n, h, w = maps.shape
    peak = np.argmax(maps.reshape(n, h * w), axis=1)   # explicit: reshape(0, -1) is ambiguous
    peak_y, peak_x = np.divmod(peak, w)
    dy2 = (np.arange(h)[None, :] - peak_y[:, None]) ** 2  # (N, H)
    dx2 = (np.arange(w)[None, :] - peak_x[:, None]) ** 2  # (N, W)
    squared_distance = dy2[:, :, None] + dx2[:, None, :]  # (N, H, W)
    nearest = np.where(masks, squared_distance, np.iinfo(np.int64).max).min(axis=(1, 2))
    return nearest <= tolerance**2


def energy_pointing_game(maps, masks) -> np.ndarray:
    """Per-image share of the map's mass inside the mask (N,); 0 where the map is all zero."""
    maps, masks = check_maps_and_masks(maps, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)


def iou_and_dice(maps, masks, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image IoU and Dice (N,), (N,) of `map >= tau` against the mask; NaN when both are empty."""
    return _iou_and_dice(*check_maps_and_masks(maps, masks), tau)


def _iou_and_dice(maps: np.ndarray, masks: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """`iou_and_dice` of maps and masks already checked (`check_maps_and_masks`)."""
    predicted = maps >= tau
    intersection = (predicted & masks).sum(axis=(1, 2)).astype(np.float64)
    union = (predicted | masks).sum(axis=(1, 2))
    sizes = predicted.sum(axis=(1, 2)) + masks.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersection / union, 2.0 * intersection / sizes


def choose_threshold(maps, masks, metric: str = "iou", taus=DEFAULT_TAUS) -> float:
    """The tau in `taus` with the best mean IoU or Dice; call it on the held-out labelled split only.

    Images with empty masks are ignored. Ties go to the smallest tau.
    """
    if metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou' or 'dice', got {metric!r}.")
    maps, masks = check_maps_and_masks(maps, masks)
    keep = masks.any(axis=(1, 2))
    if not keep.any():
        raise ValueError("choose_threshold needs at least one image with a non-empty lesion mask.")
    taus = np.asarray(taus, dtype=np.float64).ravel()
    if taus.size == 0:
        raise ValueError("taus is empty.")
    column = 0 if metric == "iou" else 1
    maps, masks = maps[keep], masks[keep]
    scores = np.array([_iou_and_dice(maps, masks, tau)[column].mean() for tau in taus])  # checked once
    return float(taus[int(np.argmax(scores))])


def pixel_precision_recall(maps, masks, thresholds=DEFAULT_THRESHOLDS, *,
                           convention: str = DEFAULT_CONVENTION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled pixel precision-recall of `score >= t`, thresholds in decreasing order.

    convention="wsolevaluation" scores only the pixels >= the lowest threshold (recall 1
    there); "clean" scores every pixel. The two agree when the grid starts at 0.

    Returns:
      (precision, recall, thresholds), each (T,), thresholds = the grid with 1.0 added, sorted
      decreasing (recall increasing). Precision is NaN where no pixel is predicted.
    """
    check_convention(convention)
    maps, masks = check_maps_and_masks(maps, masks)
    thresholds = np.unique(np.append(np.asarray(thresholds, dtype=np.float64).ravel(), 1.0))[::-1]
    positive_scores = np.sort(maps[masks])
    negative_scores = np.sort(maps[~masks])
    if positive_scores.size == 0:
        raise ValueError("No lesion pixel in the masks: precision-recall is undefined.")
    if convention == "wsolevaluation":
        # Its histogram's first bin starts at the lowest threshold: lower scores are not counted.
        positive_scores = positive_scores[np.searchsorted(positive_scores, thresholds[-1], side="left"):]
        negative_scores = negative_scores[np.searchsorted(negative_scores, thresholds[-1], side="left"):]
        if positive_scores.size == 0:
            raise ValueError(
                f"No lesion pixel scores >= the lowest threshold {thresholds[-1]:.4g}: the wsolevaluation "
                "PxAP is undefined; start the threshold grid lower (at 0).")
    tp = positive_scores.size - np.searchsorted(positive_scores, thresholds, side="left")
    fp = negative_scores.size - np.searchsorted(negative_scores, thresholds, side="left")
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
    recall = tp / positive_scores.size
    return precision, recall, thresholds


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """sum_i precision_i * (recall_i - recall_{i-1}), recall_{-1} = 0 (wsolevaluation's AUC)."""
    delta_recall = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(np.nan_to_num(precision, nan=0.0) * delta_recall))


def pxap(maps, masks, thresholds=DEFAULT_THRESHOLDS, *, convention: str = DEFAULT_CONVENTION) -> float:
    """PxAP: area under the pooled pixel precision-recall curve (Choe et al., CVPR 2020)."""
    precision, recall, _ = pixel_precision_recall(maps, masks, thresholds, convention=convention)
    return average_precision(precision, recall)


def best_box_iou(maps, masks, thresholds=DEFAULT_THRESHOLDS, *, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """(N, T): per image and threshold, the highest IoU of any proposed box with any mask box.

    0 where the mask has no component, or (convention "clean") the thresholded map is empty.
    """
    check_convention(convention)
    maps, masks = check_maps_and_masks(maps, masks)
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    n, h, w = maps.shape
    # Ground-truth boxes, padded to (N, G, 4); padding boxes get IoU 0 via `gt_valid`.
    gt_image, gt_boxes_flat = boxes.component_boxes(masks)
    gt_image = gt_image[:, 0]
    gt_count = np.bincount(gt_image, minlength=n)
    g_max = max(int(gt_count.max(initial=0)), 1)
    gt_slot = np.arange(gt_image.size) - np.repeat(np.cumsum(gt_count) - gt_count, gt_count)
    gt_boxes = np.zeros((n, g_max, 4), np.int64)
    gt_valid = np.zeros((n, g_max), bool)
    gt_boxes[gt_image, gt_slot] = gt_boxes_flat
    gt_valid[gt_image, gt_slot] = True

    best = np.zeros((n, thresholds.size))

    def add(plane, proposed):  # best[image, threshold] = max(best, each proposed box's best IoU)
        if len(proposed):
            ious = box_iou(proposed[:, None, :], gt_boxes[plane[:, 0]])  # (K, G)
            box_best = np.where(gt_valid[plane[:, 0]], ious, 0.0).max(axis=1)
            np.maximum.at(best, (plane[:, 0], plane[:, 1]), box_best)

    if convention == "wsolevaluation":  # every threshold in one sweep (`boxes.wsolevaluation_boxes_all_thresholds`)
        add(*boxes.wsolevaluation_boxes_all_thresholds(maps, thresholds))
        return best
    chunk = max(1, _LABEL_CHUNK_VOXELS // max(1, thresholds.size * h * w))
    for start in range(0, n, chunk):  # chunks of images, bounded memory; one labelling per threshold
        stop = min(n, start + chunk)
        plane, proposed = boxes.candidate_boxes(boxes.binarise(maps[start:stop], thresholds, convention), convention)
        add(plane + [start, 0], proposed)
    return best


def max_box_accuracy(maps, masks, thresholds=DEFAULT_THRESHOLDS, iou_thresholds=IOU_THRESHOLDS, *,
                     convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """MaxBoxAcc per IoU threshold (len(iou_thresholds),): max over t of the share of correct images."""
    return max_box_accuracy_from_ious(best_box_iou(maps, masks, thresholds, convention=convention), iou_thresholds)


def max_box_accuracy_from_ious(best: np.ndarray, iou_thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """`max_box_accuracy` from `best_box_iou`'s (N, T) array."""
    if best.shape[0] == 0:
        return np.full(len(iou_thresholds), np.nan)
    correct = best[None, :, :] >= np.asarray(iou_thresholds)[:, None, None]  # (D, N, T)
    return correct.mean(axis=1).max(axis=1)


def localisation_metrics(maps, masks, *, tau: float, tolerance: float = 15,
                         thresholds=DEFAULT_THRESHOLDS, convention: str = DEFAULT_CONVENTION,
                         box_ious: np.ndarray | None = None, pr_curve: tuple | None = None) -> dict:
    """All localisation metrics of one map method on images with non-empty masks.

    Args:
      maps: (N, H, W) in [0, 1]; masks: (N, H, W) {0, 1}.
      tau: IoU/Dice threshold, chosen on the held-out labelled split (`choose_threshold`).
      tolerance: pointing-game tolerance in pixels.
      thresholds: grid for PxAP and MaxBoxAccV2.
      convention: "wsolevaluation" (comparable with published tables) or "clean", for
        MaxBoxAccV2 and PxAP (module docstring).
      box_ious, pr_curve: what this function would compute, computed once by the caller for
        other uses (evaluate's PR curves and per-body-part tables): ``best_box_iou(maps, masks,
        thresholds, convention=convention)`` (N, T), and ``pixel_precision_recall(maps, masks,
        thresholds, convention=convention)[:2]`` (only where every mask has a lesion).

    Returns:
      {"pointing_game", "energy_pointing_game", "iou", "dice", "pxap", "maxboxacc_v2",
       "maxboxacc_iou30", "maxboxacc_iou50", "maxboxacc_iou70": float (NaN without images),
       "tau", "tolerance": float, "n_images": int scored, "n_excluded": int empty masks,
       "box_convention": str, the convention of MaxBoxAccV2 and PxAP}.
    """
    check_convention(convention)
    maps, masks = check_maps_and_masks(maps, masks)
    keep = masks.any(axis=(1, 2))
    if box_ious is not None and np.shape(box_ious) != (len(maps), np.size(thresholds)):
        raise ValueError(f"box_ious has shape {np.shape(box_ious)}, not (images, thresholds) "
                         f"{(len(maps), np.size(thresholds))}: pass best_box_iou of these maps")
    if pr_curve is not None and not keep.all():
        raise ValueError("pr_curve is accepted only when every mask has a lesion (it would pool the empty ones)")
    maps, masks = maps[keep], masks[keep]
    result = {"tau": float(tau), "tolerance": float(tolerance), "n_images": int(keep.sum()),
              "n_excluded": int((~keep).sum()), "box_convention": convention}
    names = ("pointing_game", "energy_pointing_game", "iou", "dice", "pxap", "maxboxacc_v2",
             "maxboxacc_iou30", "maxboxacc_iou50", "maxboxacc_iou70")
    if not keep.any():
        return {**{name: float("nan") for name in names}, **result}
    iou, dice = _iou_and_dice(maps, masks, tau)
    if box_ious is None:
        box_ious = best_box_iou(maps, masks, thresholds, convention=convention)
    else:
        box_ious = np.asarray(box_ious)[keep]
    box_accuracy = max_box_accuracy_from_ious(box_ious, IOU_THRESHOLDS)
    precision, recall = pr_curve or pixel_precision_recall(maps, masks, thresholds, convention=convention)[:2]
    values = (pointing_game(maps, masks, tolerance).mean(), energy_pointing_game(maps, masks).mean(),
              iou.mean(), dice.mean(), average_precision(precision, recall),
              box_accuracy.mean(), *box_accuracy)
    return {**{name: float(value) for name, value in zip(names, values)}, **result}
