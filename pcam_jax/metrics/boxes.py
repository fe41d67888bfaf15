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

Two ways to the same wsolevaluation boxes: `candidate_boxes` of `binarise`'s stack (one
labelling per threshold: H x W work per threshold) and `wsolevaluation_boxes_all_thresholds`
(every threshold of a map in one sweep over its row runs; what MaxBoxAccV2 uses, ~5x less
CPU on 256 px maps; docs/PERFORMANCE.md). tests/test_localisation.py checks them box for box.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph

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
    scoremap_u8, cut = wsolevaluation_cuts(maps, thresholds)
    return scoremap_u8[:, None] > cut[:, :, None, None]


def _outer_boxes(extents: np.ndarray, h: int, w: int) -> np.ndarray:
    """wsolevaluation's box of a component with inclusive extents (K, 4): boundingRect's exclusive
    end used as an inclusive coordinate, one pixel more, clipped to the image."""
    return np.stack([extents[:, 0], extents[:, 1], np.minimum(extents[:, 2] + 1, h - 1),
                     np.minimum(extents[:, 3] + 1, w - 1)], axis=1)


def _hole_boxes(extents: np.ndarray, h: int, w: int) -> np.ndarray:
    """wsolevaluation's box of a hole with inclusive extents (K, 4): OpenCV traces a hole's border
    on the foreground around it, one pixel out on every side, then the same exclusive end."""
    return np.stack([extents[:, 0] - 1, extents[:, 1] - 1, np.minimum(extents[:, 2] + 2, h - 1),
                     np.minimum(extents[:, 3] + 2, w - 1)], axis=1)


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
    outer = _outer_boxes(boxes, h, w)
    # Label the background only where a plane has holes (most thresholded smooth maps have none).
    components = np.zeros(binary.shape[:-2], np.int64)
    np.add.at(components, tuple(plane.T), 1)
    holed = np.argwhere(components - euler_number(binary) > 0)  # (P, ndim - 2)
    hole_index, holes = hole_extents(binary[tuple(holed.T)])
    hole_plane = holed[hole_index[:, 0]].reshape(-1, binary.ndim - 2)
    hole_boxes = _hole_boxes(holes, h, w)
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


# ---------------------------------------------------------------------------------------------
# Every threshold at once (wsolevaluation convention): rows cut into runs, runs joined into components.
#
# Labelling each thresholded map costs H x W per threshold (100 thresholds: 6.5 M pixels per
# 256 px map). The foreground of one map at cut c is ``u8 > c``; a row's foreground at c is a
# set of runs, and a run starts at x exactly for the cuts c with u8[x - 1] <= c < u8[x] (ends
# likewise), so every run of every cut is enumerated from neighbouring pixel pairs, with no
# pass per threshold. Runs in adjacent rows of the same cut that touch (8-connected; 4 for the
# background) are edges of one graph whose connected components (scipy.sparse.csgraph) are
# the components of every thresholded map. The work is the number of runs, which for the
# smooth maps scored here is a few per row and cut, not H x W x thresholds.

_EVENT_BUDGET = 1 << 22   # run starts handled in one graph (memory: ~100 bytes each)


def wsolevaluation_cuts(maps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scoremap_u8 (N, H, W), cut (N, T) int): foreground of map n at threshold t is
    ``scoremap_u8[n] > cut[n, t]`` (the wsolevaluation rule of the module docstring)."""
    maps = np.asarray(maps, np.float64)
    thresholds = np.asarray(thresholds, np.float64).ravel()
    scoremap_u8 = (maps * 255).astype(np.uint8)  # truncation, as numpy's cast in wsolevaluation
    peak = scoremap_u8.max(axis=(1, 2), initial=0).astype(np.float64)
    cut = np.trunc(thresholds[None, :] * peak[:, None])  # python int() of a float: truncation
    return scoremap_u8, cut.astype(np.int64)


def _levels_between(low: np.ndarray, high: np.ndarray, first_level: np.ndarray, pixels_per_image: int):
    """(level index, position) of every level l of the pixel's image with low <= l < high, for
    ``low``, ``high`` flat over images (position: index into them).

    ``first_level[i, v + 1]``: index of image i's first level >= v (v from -1 to 256), a lookup
    in place of a binary search per pixel."""
    position = np.flatnonzero(high > low).astype(np.int32)
    row = (position // pixels_per_image) * first_level.shape[1] + 1
    lo = first_level.ravel()[row + low[position]]
    count = first_level.ravel()[row + high[position]] - lo
    offset = np.cumsum(count) - count
    total = int(count.sum())
    return np.repeat(lo - offset, count) + np.arange(total, dtype=np.int32), np.repeat(position, count)


def _run_components(u: np.ndarray, first_level: np.ndarray, foreground: bool):
    """Components of ``u > level`` (foreground, 8-connected) or ``u <= level`` (background,
    4-connected) of every level of every image of ``u`` (n, H, W) int16.

    Returns (level index (C,), inclusive extents (C, 4) y0, x0, y1, x1)."""
    n, h, w = u.shape
    # Outside the image: background for the foreground's runs, foreground for the background's.
    outside = -1 if foreground else 256
    padded = np.pad(u, [(0, 0), (0, 0), (1, 1)], constant_values=outside)
    here, left, right = padded[..., 1:-1].ravel(), padded[..., :-2].ravel(), padded[..., 2:].ravel()
    if foreground:   # runs start where left <= l < here, end where right <= l < here
        start_level, start_pos = _levels_between(left, here, first_level, h * w)
        end_level, end_pos = _levels_between(right, here, first_level, h * w)
    else:            # background runs start where here <= l < left, end where here <= l < right
        start_level, start_pos = _levels_between(here, left, first_level, h * w)
        end_level, end_pos = _levels_between(here, right, first_level, h * w)
    if not len(start_level):
        return np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    # Events come in pixel order; a stable sort by level makes it (level, row, x), where the k-th
    # start and the k-th end bound the same run (radix sort on 16-bit keys: linear time).
    key_type = np.uint16 if int(first_level.max()) < 1 << 16 else np.int64
    start = np.argsort(start_level.astype(key_type), kind="stable")
    end = np.argsort(end_level.astype(key_type), kind="stable")
    level = start_level[start]
    y, x0 = np.divmod(start_pos[start] % (h * w), w)   # int32 from here on
    x1 = end_pos[end] % w
    # Edges: each run against every run of the next row at its level (a block of the sorted
    # runs, a few long), kept where they touch. Linear passes, no search.
    group = level * h + y                                  # non-decreasing
    first = np.flatnonzero(np.diff(group, prepend=-1))     # each (level, row) block's first run
    block = np.cumsum(np.diff(group, prepend=-1) != 0) - 1
    bounds = np.append(first, len(group))
    following = np.minimum(block + 1, len(first) - 1)      # the block after the run's own
    next_row = (block + 1 < len(first)) & (group[first[following]] == group + 1) & (y < h - 1)
    count = np.where(next_row, bounds[following + 1] - bounds[following], 0)
    offset = np.cumsum(count) - count
    a = np.repeat(np.arange(len(count), dtype=np.int32), count)
    b = np.repeat(first[following] - offset, count) + np.arange(len(a), dtype=np.int32)
    reach = 1 if foreground else 0      # 8-connected: diagonal neighbours touch
    touch = (x0[b] <= x1[a] + reach) & (x0[a] <= x1[b] + reach)
    a, b = a[touch], b[touch]
    graph = scipy.sparse.csr_matrix((np.ones(len(a), np.int8), b, np.searchsorted(a, np.arange(len(y) + 1))),
                                    shape=(len(y), len(y)))
    n_components, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    extents = np.empty((4, n_components), np.int32)   # rows contiguous, dtypes equal: ufunc.at's fast path
    extents[:2], extents[2:] = np.iinfo(np.int32).max, -1
    label = label.astype(np.int32)
    for row, values, reduce in ((0, y, np.minimum), (1, x0, np.minimum), (2, y, np.maximum), (3, x1, np.maximum)):
        reduce.at(extents[row], label, values.astype(np.int32))
    component_level = np.empty(n_components, np.int64)
    component_level[label] = level
    return component_level, extents.T.astype(np.int64)


def wsolevaluation_boxes_all_thresholds(maps: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """`candidate_boxes` of ``binarise(maps, thresholds, "wsolevaluation")`` without labelling
    each threshold: the same boxes, as (plane index (K, 2) image and threshold, boxes (K, 4)),
    in another order (thresholds with the same cut share their boxes).

    ``maps`` (N, H, W) in [0, 1]; see the section comment above for how."""
    scoremap_u8, cut = wsolevaluation_cuts(maps, thresholds)
    n, h, w = scoremap_u8.shape
    u = scoremap_u8.astype(np.int16)
    planes, found = [np.zeros((0, 2), np.int64)], [np.zeros((0, 4), np.int64)]
    # Images in groups of about _EVENT_BUDGET foreground run starts (bounded memory).
    rises = np.maximum(np.diff(np.pad(u, [(0, 0), (0, 0), (1, 0)], constant_values=-1), axis=2), 0)
    per_image = rises.reshape(n, -1).sum(axis=1) * min(1.0, cut.shape[1] / 255) + 1
    group = np.floor(np.cumsum(per_image) / _EVENT_BUDGET).astype(np.int64)
    for g in np.unique(group):
        images = np.flatnonzero(group == g)
        levels = [np.unique(cut[i]) for i in images]
        level_image = np.repeat(np.arange(len(images)), [len(v) for v in levels])
        level_value = np.concatenate(levels)
        level_keys = level_image * 1024 + level_value + 2
        first_level = np.searchsorted(level_keys, np.arange(len(images))[:, None] * 1024 + np.arange(-1, 257) + 2)
        outer_level, outer = _run_components(u[images], first_level, foreground=True)
        outer = _outer_boxes(outer, h, w)
        hole_level, holes = _run_components(u[images], first_level, foreground=False)
        inside = (holes[:, 0] > 0) & (holes[:, 1] > 0) & (holes[:, 2] < h - 1) & (holes[:, 3] < w - 1)
        hole_level, holes = hole_level[inside], holes[inside]
        holes = _hole_boxes(holes, h, w)
        peak = u[images].max(axis=(1, 2))
        empty_level = np.flatnonzero(level_value >= peak[level_image])   # nothing above the cut
        box_level = np.concatenate([outer_level, hole_level, empty_level])
        box = np.concatenate([outer, holes, np.zeros((len(empty_level), 4), np.int64)])
        # Back from levels to thresholds: every threshold whose cut is the box's level.
        threshold_level = np.searchsorted(level_keys, np.arange(len(images))[:, None] * 1024 + cut[images] + 2)
        order = np.argsort(threshold_level.ravel(), kind="stable")
        sorted_levels = threshold_level.ravel()[order]
        first = np.searchsorted(sorted_levels, box_level, side="left")
        last = np.searchsorted(sorted_levels, box_level, side="right")
        count = last - first
        which = np.repeat(np.arange(len(box_level)), count)
        flat = order[first[which] + (np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count))]
        image_index, threshold_index = np.divmod(flat, cut.shape[1])
        planes.append(np.stack([images[image_index], threshold_index], axis=1))
        found.append(box[which])
    return np.concatenate(planes).astype(np.int64), np.concatenate(found).astype(np.int64)
