"""Boxes of thresholded saliency maps, in the two conventions `localisation` offers.

Boxes are (y0, x0, y1, x1) ints read as inclusive pixel coordinates: a box covers
(y1 - y0 + 1) x (x1 - x0 + 1) pixels, which is how wsolevaluation's `calculate_multiple_iou`
counts them too (its "+1"). Ground-truth boxes are the inclusive extents of the mask's
8-connected components in both conventions (`component_boxes`).

convention="clean": threshold the float map with ``map >= t``; one box per 8-connected
component, its exact inclusive extent; a threshold with no foreground gives no box.

convention="wsolevaluation" reproduces wsolevaluation's `compute_bboxes_from_scoremaps` with
``multi_contour_eval=True`` (the MaxBoxAccV2 of Choe et al., CVPR 2020) without OpenCV:
- binarise: ``u8 = uint8(255 * map)`` (truncated), foreground ``u8 > int(t * max(u8))``
  (cv2.threshold, THRESH_BINARY, with a threshold relative to the map's own maximum);
- contours: cv2.findContours with RETR_TREE (Suzuki & Abe border following, foreground
  8-connected, background 4-connected, the image padded with background) returns one outer
  border per foreground component and one hole border per hole, i.e. per 4-connected
  background component that does not reach the image border, at every nesting level;
- box of a contour: cv2.boundingRect's (x, y, w, h) turned into (x, y, x + w, y + h) and
  clipped to (W - 1, H - 1). An outer border's points span the component, so its box is the
  component's extent grown by one pixel at the bottom and right. A hole border runs over the
  foreground pixels 4- and 8-adjacent to the hole, so it spans the hole's extent grown by one
  pixel on every side, and its box one more at the bottom and right;
- a threshold with no foreground gives the box (0, 0, 0, 0), one pixel, not no box.
Checked equal to OpenCV 5.0 (findContours + boundingRect) on 16,000 random, quantised and
smooth map/threshold pairs; tests/test_localisation.py repeats that check where cv2 is installed.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

CONVENTIONS = ("wsolevaluation", "clean")


class UnknownConventionError(ValueError):
    """A box/PxAP convention other than those in `CONVENTIONS`."""


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise UnknownConventionError(
            f"convention must be one of {CONVENTIONS} ('wsolevaluation' to compare with published "
            f"tables, 'clean' for exact pixel extents); got {convention!r}.")
    return convention


def _plane_structure(ndim: int, connectivity: int) -> np.ndarray:
    """scipy.ndimage structure that connects pixels within each 2-D plane only, 4- or 8-connected."""
    structure = np.zeros((3,) * ndim, dtype=bool)
    centre = (1,) * (ndim - 2)
    if connectivity == 8:
        structure[centre] = True
    else:
        structure[centre + (1, slice(None))] = True
        structure[centre + (slice(None), 1)] = True
    return structure


def _labelled_extents(binary: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Plane index (K, ndim - 2) and inclusive extents (K, 4) of the components of each plane."""
    lead = binary.ndim - 2
    if binary.size == 0:
        return np.zeros((0, lead), np.int64), np.zeros((0, 4), np.int64)
    labels, _ = scipy.ndimage.label(binary, structure=_plane_structure(binary.ndim, connectivity))
    slices = scipy.ndimage.find_objects(labels)
    if not slices:
        return np.zeros((0, lead), np.int64), np.zeros((0, 4), np.int64)
    extents = np.array([[(s.start, s.stop) for s in objects] for objects in slices])  # (K, ndim, 2)
    plane = extents[:, :lead, 0]
    boxes = np.stack([extents[:, -2, 0], extents[:, -1, 0], extents[:, -2, 1] - 1, extents[:, -1, 1] - 1], axis=1)
    return plane, boxes


def component_boxes(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive boxes of the 8-connected components of each 2-D plane of `binary` (..., H, W).

    Returns (plane index (K, binary.ndim - 2) int, boxes (K, 4) int as y0, x0, y1, x1).
    """
    return _labelled_extents(np.asarray(binary, bool), 8)


def hole_extents(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive extents of the holes of each plane of `binary` (..., H, W).

    A hole is a 4-connected background component that touches no image border (so it is not
    joined to the background that surrounds the image). Same return shapes as `component_boxes`.
    """
    binary = np.asarray(binary, bool)
    h, w = binary.shape[-2:]
    plane, extents = _labelled_extents(~binary, 4)
    inside = (extents[:, 0] > 0) & (extents[:, 1] > 0) & (extents[:, 2] < h - 1) & (extents[:, 3] < w - 1)
    return plane[inside], extents[inside]


def euler_number(binary: np.ndarray) -> np.ndarray:
    """Components minus holes of each plane of `binary` (..., H, W), foreground 8-connected.

    Gray's bit-quad count over the 2x2 windows of the zero-padded plane:
    E = (n1 - n3 - 2 nD) / 4, n1 / n3 windows with one / three foreground pixels, nD the two
    diagonal ones. A few array passes; it spares labelling the background of hole-free planes.
    """
    binary = np.asarray(binary, bool)
    pad = [(0, 0)] * (binary.ndim - 2) + [(1, 1), (1, 1)]
    padded = np.pad(binary, pad).astype(np.uint8)
    top_left, top_right = padded[..., :-1, :-1], padded[..., :-1, 1:]
    bottom_left, bottom_right = padded[..., 1:, :-1], padded[..., 1:, 1:]
    count = top_left + top_right + bottom_left + bottom_right
    diagonal = (count == 2) & (top_left == bottom_right)
    axes = (-2, -1)
    quads = (count == 1).sum(axis=axes) - (count == 3).sum(axis=axes) - 2 * diagonal.sum(axis=axes)
    return quads // 4


def binarise(maps: np.ndarray, thresholds: np.ndarray, convention: str) -> np.ndarray:
    """Foreground of each map at each threshold, (N, T, H, W) bool, from maps (N, H, W) in [0, 1]."""
    check_convention(convention)
    maps = np.asarray(maps, np.float64)
    thresholds = np.asarray(thresholds, np.float64).ravel()
    if convention == "clean":
        return maps[:, None] >= thresholds[None, :, None, None]
    scoremap_u8 = (maps * 255).astype(np.uint8)  # truncation, as numpy's cast in wsolevaluation
    peak = scoremap_u8.max(axis=(1, 2), initial=0).astype(np.float64)
    cut = np.trunc(thresholds[None, :] * peak[:, None])  # python int() of a float: truncation
    return scoremap_u8[:, None] > cut[:, :, None, None]


def candidate_boxes(binary: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Every box a thresholded map proposes, per plane of `binary` (..., H, W).

    Returns (plane index (K, binary.ndim - 2), boxes (K, 4) y0, x0, y1, x1 for `box_iou`).
    """
    check_convention(convention)
    binary = np.asarray(binary, bool)
    plane, boxes = component_boxes(binary)
    if convention == "clean":
        return plane, boxes
    h, w = binary.shape[-2:]
    # boundingRect's exclusive end used as an inclusive coordinate: one pixel more, clipped.
    outer = np.stack([boxes[:, 0], boxes[:, 1], np.minimum(boxes[:, 2] + 1, h - 1),
                      np.minimum(boxes[:, 3] + 1, w - 1)], axis=1)
    # Label the background only where a plane has holes (most thresholded smooth maps have none).
    components = np.zeros(binary.shape[:-2], np.int64)
    np.add.at(components, tuple(plane.T), 1)
    holed = np.argwhere(components - euler_number(binary) > 0)  # (P, ndim - 2)
    hole_index, holes = hole_extents(binary[tuple(holed.T)])
    hole_plane = holed[hole_index[:, 0]].reshape(-1, binary.ndim - 2)
    hole_boxes = np.stack([holes[:, 0] - 1, holes[:, 1] - 1, np.minimum(holes[:, 2] + 2, h - 1),
                           np.minimum(holes[:, 3] + 2, w - 1)], axis=1)
    empty_plane = np.argwhere(~binary.any(axis=(-2, -1)))
    empty_boxes = np.zeros((len(empty_plane), 4), np.int64)
    return (np.concatenate([plane, hole_plane, empty_plane]).astype(np.int64),
            np.concatenate([outer, hole_boxes, empty_boxes]).astype(np.int64))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of inclusive pixel boxes (y0, x0, y1, x1), broadcasting over leading axes (..., 4)."""
    y0 = np.maximum(boxes_a[..., 0], boxes_b[..., 0])
    x0 = np.maximum(boxes_a[..., 1], boxes_b[..., 1])
    y1 = np.minimum(boxes_a[..., 2], boxes_b[..., 2])
    x1 = np.minimum(boxes_a[..., 3], boxes_b[..., 3])
    intersection = np.maximum(0, y1 - y0 + 1) * np.maximum(0, x1 - x0 + 1)
    area_a = (boxes_a[..., 2] - boxes_a[..., 0] + 1) * (boxes_a[..., 3] - boxes_a[..., 1] + 1)
    area_b = (boxes_b[..., 2] - boxes_b[..., 0] + 1) * (boxes_b[..., 3] - boxes_b[..., 1] + 1)
    return intersection / (area_a + area_b - intersection)
