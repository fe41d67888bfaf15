"""Localisation metrics against hand-computed 8x8 cases and slow pixel loops written here."""

import math

import numpy as np
import pytest

from pcam_jax.metrics import boxes as bx
from pcam_jax.metrics import localisation as loc


# ----------------------------------------------------------------------------- slow references

def _argmax_first(image):
    best, where = -1.0, None
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if image[y, x] > best:
                best, where = image[y, x], (y, x)
    return where


def _slow_pointing_game(maps, masks, tolerance):
    hits = []
    for image, mask in zip(maps, masks):
        py, px = _argmax_first(image)
        hit = False
        for y in range(mask.shape[0]):  # every mask pixel inside the disk around the peak
            for x in range(mask.shape[1]):
                if mask[y, x] and (y - py) ** 2 + (x - px) ** 2 <= tolerance**2:
                    hit = True
        hits.append(hit)
    return np.array(hits)


def _slow_pxap(maps, masks, thresholds):
    scores, truth = maps.ravel(), masks.ravel().astype(bool)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(float(t) for t in thresholds) | {1.0}, reverse=True):
        tp = fp = 0
        for s, g in zip(scores, truth):
            if s >= t:
                tp += int(g)
                fp += int(not g)
        recall = tp / truth.sum()
        if tp + fp:
            ap += tp / (tp + fp) * (recall - previous_recall)
        previous_recall = recall
    return ap


def _flood_fill_boxes(binary, connectivity=8):
    """Boxes (y0, x0, y1, x1) of 8- (or 4-) connected components by an explicit stack flood fill."""
    h, w = binary.shape
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if connectivity == 8 or abs(dy) + abs(dx) == 1]
    seen = np.zeros_like(binary, dtype=bool)
    boxes = []
    for y in range(h):
        for x in range(w):
            if binary[y, x] and not seen[y, x]:
                stack, box = [(y, x)], [y, x, y, x]
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    box = [min(box[0], cy), min(box[1], cx), max(box[2], cy), max(box[3], cx)]
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
                boxes.append(box)
    return boxes


def _slow_iou(a, b):
    ih = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iw = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ih * iw
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return inter / (area(a) + area(b) - inter)


def _slow_wsolevaluation_boxes(image, t):
    """wsolevaluation's boxes for one map and threshold, pixel by pixel (rules in boxes.py)."""
    h, w = image.shape
    scoremap_u8 = [[int(image[y, x] * 255) for x in range(w)] for y in range(h)]
    cut = int(t * max(max(row) for row in scoremap_u8))
    binary = np.array([[scoremap_u8[y][x] > cut for x in range(w)] for y in range(h)])
    if not binary.any():
        return [[0, 0, 0, 0]]
    boxes = [[y0, x0, min(y1 + 1, h - 1), min(x1 + 1, w - 1)] for y0, x0, y1, x1 in _flood_fill_boxes(binary)]
    for y0, x0, y1, x1 in _flood_fill_boxes(~binary, connectivity=4):
        if y0 > 0 and x0 > 0 and y1 < h - 1 and x1 < w - 1:  # a hole: background not reaching the border
            boxes.append([y0 - 1, x0 - 1, min(y1 + 2, h - 1), min(x1 + 2, w - 1)])
    return boxes


def _slow_max_box_accuracy(maps, masks, thresholds, iou_thresholds=(0.3, 0.5, 0.7), convention="clean"):
    correct = np.zeros((len(iou_thresholds), len(thresholds)))
    for image, mask in zip(maps, masks):
        gt_boxes = _flood_fill_boxes(mask.astype(bool))
        for j, t in enumerate(thresholds):
            best = 0.0
            proposed = _flood_fill_boxes(image >= t) if convention == "clean" else _slow_wsolevaluation_boxes(image, t)
            for box in proposed:
                for gt in gt_boxes:
                    best = max(best, _slow_iou(box, gt))
            for d, delta in enumerate(iou_thresholds):
                correct[d, j] += best >= delta
    return (correct / len(maps)).max(axis=1)


def _random_maps_and_masks(seed, n=6, size=10, blobs=2):
    rng = np.random.default_rng(seed)
    # Quantised values make ties and equal-threshold pixels common.
    maps = np.round(rng.random((n, size, size)) * 8) / 8
    masks = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(blobs):
            y, x = rng.integers(0, size - 2, 2)
            hh, ww = rng.integers(1, 4, 2)
            masks[i, y:y + hh, x:x + ww] = 1
    return maps, masks


# ----------------------------------------------------------------------------- hand-computed cases

def test_pointing_game_hand_case():
    # Image 0: peak at (1, 1); mask is the 2x2 block rows 5-6, cols 5-6. The nearest mask pixel
    # (5, 5) is sqrt(4^2 + 4^2) = 5.66 px away: a miss at tolerance 5, a hit at 6.
    # Image 1: the peak (6, 6) is inside the same mask: a hit even at tolerance 0.
    maps = np.zeros((2, 8, 8))
    maps[0, 1, 1] = 1.0
    maps[1, 6, 6] = 1.0
    masks = np.zeros((2, 8, 8), np.int64)
    masks[:, 5:7, 5:7] = 1
    np.testing.assert_array_equal(loc.pointing_game(maps, masks, tolerance=0), [False, True])
    np.testing.assert_array_equal(loc.pointing_game(maps, masks, tolerance=5), [False, True])
    np.testing.assert_array_equal(loc.pointing_game(maps, masks, tolerance=6), [True, True])
    # The disk is closed: tolerance exactly sqrt(32) reaches (5, 5).
    assert loc.pointing_game(maps[:1], masks[:1], tolerance=math.sqrt(32))[0]
    # No images (a group with none, e.g. every train mask labelled): no hits, not a crash.
    assert loc.pointing_game(maps[:0], masks[:0], tolerance=5).shape == (0,)


def test_energy_iou_dice_hand_case():
    # Energy: map 1.0 on the 4 mask pixels and 0.5 on 8 pixels outside -> 4 / (4 + 4) = 0.5.
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 0:2, 0:2] = 1
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 7, :] = 0.5
    np.testing.assert_allclose(loc.energy_pointing_game(maps, masks), [0.5])
    # An all-zero map gets no credit, not NaN.
    np.testing.assert_allclose(loc.energy_pointing_game(np.zeros((1, 8, 8)), masks), [0.0])

    # IoU/Dice: map >= tau on rows 0-3 x cols 0-3 (16 px), mask rows 2-5 x cols 2-5 (16 px);
    # they share rows 2-3 x cols 2-3 = 4 px: IoU = 4 / 28 = 1/7, Dice = 8 / 32 = 1/4.
    maps = np.zeros((1, 8, 8))
    maps[0, 0:4, 0:4] = 0.7
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 2:6, 2:6] = 1
    iou, dice = loc.iou_and_dice(maps, masks, tau=0.5)
    np.testing.assert_allclose(iou, [1 / 7])
    np.testing.assert_allclose(dice, [0.25])
    # tau = 0.7 keeps the 0.7 pixels (>=), tau = 0.75 none: IoU 0.
    np.testing.assert_allclose(loc.iou_and_dice(maps, masks, tau=0.7)[0], [1 / 7])
    np.testing.assert_allclose(loc.iou_and_dice(maps, masks, tau=0.75)[0], [0.0])


def test_pxap_hand_case():
    # 64 pixels, 4 in the mask scoring 1.0, 1.0, 0.6, 0.2; two outside score 0.8, the rest 0.
    # Thresholds {0, 0.5} plus 1.0, decreasing:
    #   t = 1.0: tp 2, fp 0  -> P 1,     R 0.5
    #   t = 0.5: tp 3, fp 2  -> P 3/5,   R 0.75
    #   t = 0.0: tp 4, fp 60 -> P 4/64,  R 1
    # AP = 1 * 0.5 + 0.6 * 0.25 + 4/64 * 0.25 = 0.665625.
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 0, 0:4] = 1
    maps[0, 0, 0:4] = [1.0, 1.0, 0.6, 0.2]
    maps[0, 5, 5] = maps[0, 6, 6] = 0.8
    precision, recall, thresholds = loc.pixel_precision_recall(maps, masks, thresholds=[0.0, 0.5])
    np.testing.assert_allclose(thresholds, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(precision, [1.0, 0.6, 4 / 64])
    np.testing.assert_allclose(recall, [0.5, 0.75, 1.0])
    assert loc.pxap(maps, masks, thresholds=[0.0, 0.5]) == pytest.approx(0.665625)


def _box_hand_case():
    maps = np.zeros((2, 8, 8))
    masks = np.zeros((2, 8, 8), np.int64)
    # Image 0: ground truth = 2x2 block (1,1)-(2,2) and the single pixel (6,6): two GT boxes.
    # Map 1.0 on rows 1-2 x cols 1-3 -> box IoU with the block 4/6; 0.5 on (6,5),(6,6) -> IoU 1/2
    # with the pixel. Best box IoU 2/3 at both thresholds 0.25 and 0.75.
    masks[0, 1:3, 1:3] = 1
    masks[0, 6, 6] = 1
    maps[0, 1:3, 1:4] = 1.0
    maps[0, 6, 5:7] = 0.5
    # Image 1: GT 3x3 block rows 4-6 x cols 4-6. Map 1.0 on the block inside a 0.5 square rows
    # 3-7 x cols 3-7: at t = 0.25 the box is the 5x5 square, IoU 9/25 = 0.36; at t = 0.75 IoU 1.
    masks[1, 4:7, 4:7] = 1
    maps[1, 3:8, 3:8] = 0.5
    maps[1, 4:7, 4:7] = 1.0
    return maps, masks


def test_max_box_accuracy_hand_case():
    maps, masks = _box_hand_case()
    best = loc.best_box_iou(maps, masks, thresholds=[0.25, 0.75], convention="clean")
    np.testing.assert_allclose(best, [[2 / 3, 2 / 3], [0.36, 1.0]])
    # delta 0.3: both images correct at either t -> 1.
    # delta 0.5: t=0.25 image 0 only (1/2), t=0.75 both -> 1.
    # delta 0.7: t=0.25 none, t=0.75 image 1 only -> 1/2.   V2 = (1 + 1 + 0.5) / 3.
    accuracy = loc.max_box_accuracy(maps, masks, thresholds=[0.25, 0.75], convention="clean")
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 0.5])
    metrics = loc.localisation_metrics(maps, masks, tau=0.5, thresholds=[0.25, 0.75], convention="clean")
    assert metrics["maxboxacc_v2"] == pytest.approx(2.5 / 3)
    assert metrics["maxboxacc_iou70"] == pytest.approx(0.5)


def test_components_are_eight_connected():
    binary = np.zeros((1, 5, 5), bool)
    binary[0, 0, 0] = binary[0, 1, 1] = True  # diagonal neighbours: one component
    binary[0, 4, 4] = True
    plane, boxes = bx.component_boxes(binary)
    assert sorted(map(tuple, boxes.tolist())) == [(0, 0, 1, 1), (4, 4, 4, 4)]
    np.testing.assert_array_equal(plane, [[0], [0]])


# ----------------------------------------------------------------------------- slow references

@pytest.mark.parametrize("seed", [0, 1])
def test_pointing_game_matches_disk_loop(seed):
    maps, masks = _random_maps_and_masks(seed, n=8, size=12)
    for tolerance in (0, 1, 2.5, 4):
        np.testing.assert_array_equal(loc.pointing_game(maps, masks, tolerance),
                                      _slow_pointing_game(maps, masks, tolerance))


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_iou_dice_match_loops(seed):
    maps, masks = _random_maps_and_masks(seed)
    for i, (image, mask) in enumerate(zip(maps, masks)):
        inside = sum(image[y, x] for y in range(10) for x in range(10) if mask[y, x])
        assert loc.energy_pointing_game(maps, masks)[i] == pytest.approx(inside / image.sum())
        predicted = image >= 0.5
        inter = sum(bool(predicted[y, x] and mask[y, x]) for y in range(10) for x in range(10))
        union = sum(bool(predicted[y, x] or mask[y, x]) for y in range(10) for x in range(10))
        iou, dice = loc.iou_and_dice(maps, masks, 0.5)
        assert iou[i] == pytest.approx(inter / union)
        assert dice[i] == pytest.approx(2 * inter / (predicted.sum() + mask.sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pxap_matches_threshold_loop(seed):
    maps, masks = _random_maps_and_masks(seed)
    thresholds = np.arange(0, 1, 0.1)
    assert loc.pxap(maps, masks, thresholds) == pytest.approx(_slow_pxap(maps, masks, thresholds))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_box_accuracy_matches_flood_fill(seed, monkeypatch):
    maps, masks = _random_maps_and_masks(seed, n=5, size=10, blobs=3)
    thresholds = [0.0, 0.3, 0.55, 0.8, 1.0]
    for convention in ("clean", "wsolevaluation"):
        expected = _slow_max_box_accuracy(maps, masks, thresholds, convention=convention)
        np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, thresholds, convention=convention), expected)
        # Chunking the label volume (images per scipy call) must not change the answer.
        with monkeypatch.context() as patch:
            patch.setattr(loc, "_LABEL_CHUNK_VOXELS", 2 * 100 * len(thresholds))
            np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, thresholds, convention=convention),
                                       expected)


def test_choose_threshold_matches_loop_and_ignores_empty_masks():
    maps, masks = _random_maps_and_masks(3, n=6)
    maps = np.clip(0.6 * masks + 0.5 * maps, 0, 1)
    masks[5] = 0  # an empty mask must not count
    taus = np.arange(0.1, 1.0, 0.1)

    def mean_iou(tau):
        values = []
        for image, mask in zip(maps[:5], masks[:5]):
            p = image >= tau
            values.append((p & (mask == 1)).sum() / (p | (mask == 1)).sum())
        return np.mean(values)

    expected = taus[int(np.argmax([mean_iou(t) for t in taus]))]
    assert loc.choose_threshold(maps, masks, "iou", taus) == pytest.approx(expected)
    with pytest.raises(ValueError, match="metric"):
        loc.choose_threshold(maps, masks, "accuracy", taus)


def test_localisation_metrics_excludes_and_counts_normal_images():
    maps, masks = _random_maps_and_masks(4, n=6)
    masks[[1, 4]] = 0
    metrics = loc.localisation_metrics(maps, masks, tau=0.5, tolerance=2, thresholds=np.arange(0, 1, 0.25))
    assert metrics["n_images"] == 4 and metrics["n_excluded"] == 2
    kept = [0, 2, 3, 5]
    assert metrics["pointing_game"] == pytest.approx(_slow_pointing_game(maps[kept], masks[kept], 2).mean())
    assert metrics["pxap"] == pytest.approx(_slow_pxap(maps[kept], masks[kept], np.arange(0, 1, 0.25)))
    # Only normal images: NaN metrics and the count, never a crash.
    empty = loc.localisation_metrics(maps, np.zeros_like(masks), tau=0.5)
    assert empty["n_images"] == 0 and empty["n_excluded"] == 6 and math.isnan(empty["pxap"])


def test_bad_inputs_get_clear_errors():
    maps, masks = _random_maps_and_masks(0, n=2)
    with pytest.raises(ValueError, match="resize the maps"):
        loc.localisation_metrics(maps[:, :8], masks, tau=0.5)
    with pytest.raises(ValueError, match="min-max normalise"):
        loc.localisation_metrics(maps * 3, masks, tau=0.5)
    with pytest.raises(ValueError, match="binary"):
        loc.localisation_metrics(maps, masks * 2, tau=0.5)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        loc.localisation_metrics(maps[..., None], masks[..., None], tau=0.5)


def test_pointing_tolerance_scales_with_the_image_unless_set():
    assert loc.pointing_tolerance(320) == 15.0          # the usual tolerance, at the size it is meant for
    assert loc.pointing_tolerance(128) == 6.0           # 15 * 128 / 320
    assert loc.pointing_tolerance(128, -1) == 6.0       # the config default (-1) means "scale"
    assert loc.pointing_tolerance(128, 15) == 15.0      # set: taken as given
    assert loc.pointing_tolerance(32, 0) == 0.0
    maps, masks = np.zeros((1, 8, 8)), np.zeros((1, 8, 8), bool)
    masks[0, 4, 4] = True
    with pytest.raises(ValueError, match="pointing_tolerance"):   # the unresolved config value
        loc.pointing_game(maps, masks, -1.0)


# ----------------------------------------------------------------------------- the two conventions

def test_perfect_box_scores_100_100_0_under_wsolevaluation():
    # Map and mask: the same 4x5 block, rows 2-5 x cols 1-5 of a 10x10 image. Clean: the box is
    # the block, IoU 1. wsolevaluation: boundingRect's (x + w, y + h) read as inclusive adds a
    # row and a column, 5x6 = 30 px around the 20 px block: IoU 20/30 < 0.7.
    maps = np.zeros((1, 10, 10))
    masks = np.zeros((1, 10, 10), np.int64)
    maps[0, 2:6, 1:6] = 1.0
    masks[0, 2:6, 1:6] = 1
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.5], convention="clean"), [[1.0]])
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.5], convention="wsolevaluation"), [[2 / 3]])
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, convention="clean"), [1, 1, 1])
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, convention="wsolevaluation"), [1, 1, 0])
    # At the bottom-right corner the extra row and column are clipped away: IoU 1 again.
    corner_maps, corner_masks = np.zeros((1, 10, 10)), np.zeros((1, 10, 10), np.int64)
    corner_maps[0, 6:, 5:] = 1.0
    corner_masks[0, 6:, 5:] = 1
    np.testing.assert_allclose(
        loc.best_box_iou(corner_maps, corner_masks, [0.5], convention="wsolevaluation"), [[1.0]])


def test_a_hole_proposes_its_own_box_under_wsolevaluation():
    # A ring: foreground rows 1-8 x cols 1-8 of a 10x10 image with a 4x4 hole at rows 3-6 x
    # cols 3-6. Ground truth: rows 2-7 x cols 2-7 (36 px).
    #   clean: one box, the ring's extent (1, 1, 8, 8), 64 px: IoU 36/64 = 0.5625.
    #   wsolevaluation: outer box (1, 1, 9, 9), 81 px: 36/81; the hole's border runs over rows
    #   and cols 2-7, its box (2, 2, 8, 8), 49 px: 36/49 = 0.735, the best.
    maps = np.zeros((1, 10, 10))
    maps[0, 1:9, 1:9] = 1.0
    maps[0, 3:7, 3:7] = 0.0
    masks = np.zeros((1, 10, 10), np.int64)
    masks[0, 2:8, 2:8] = 1
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.5], convention="clean"), [[36 / 64]])
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.5], convention="wsolevaluation"), [[36 / 49]])
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, [0.5], convention="clean"), [1, 1, 0])
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, [0.5], convention="wsolevaluation"), [1, 1, 1])
    plane, boxes = bx.candidate_boxes(maps[:, None] >= 0.5, "wsolevaluation")
    assert sorted(map(tuple, boxes.tolist())) == [(1, 1, 9, 9), (2, 2, 8, 8)]


def test_holes_are_4_connected_background_off_the_border():
    binary = np.zeros((9, 9), bool)
    binary[0:5, 0:5] = True
    binary[1:4, 1:4] = False   # hole A, rows/cols 1-3 ...
    binary[2, 2] = True        # ... with an island in it (whose own 4 neighbours are background)
    binary[5:8, 5:8] = True
    binary[6, 6] = False       # hole B: one pixel
    binary[4, 4] = False       # touches only diagonally: (4, 4) is 4-connected to (4, 5), outside
    _, holes = bx.hole_extents(binary[None])
    # Hole A is the 3x3 square minus the island; (4, 4) reaches the border through (4, 5)..(4, 8).
    assert sorted(map(tuple, holes.tolist())) == [(1, 1, 3, 3), (6, 6, 6, 6)]
    # A background pixel cut off by diagonal foreground only is a hole (background is 4-connected).
    diagonal = np.zeros((5, 5), bool)
    diagonal[1, 2] = diagonal[2, 1] = diagonal[2, 3] = diagonal[3, 2] = True
    _, holes = bx.hole_extents(diagonal[None])
    assert holes.tolist() == [[2, 2, 2, 2]]


def test_euler_number_is_components_minus_holes():
    # The bit-quad count decides which planes get their background labelled: it must agree with
    # flood fills (8-connected foreground, 4-connected holes) on noisy planes full of both.
    rng = np.random.default_rng(3)
    planes = rng.random((2, 20, 9, 9)) < rng.uniform(0.2, 0.8, (2, 20, 1, 1))
    expected = np.zeros(planes.shape[:2], np.int64)
    for i, j in np.ndindex(*planes.shape[:2]):
        holes = [box for box in _flood_fill_boxes(~planes[i, j], connectivity=4)
                 if box[0] > 0 and box[1] > 0 and box[2] < 8 and box[3] < 8]
        expected[i, j] = len(_flood_fill_boxes(planes[i, j])) - len(holes)
    np.testing.assert_array_equal(bx.euler_number(planes), expected)
    assert (expected < 0).any() and (expected > 1).any()  # the planes do have holes and islands


def test_wsolevaluation_binarises_uint8_maps_above_a_cut_relative_to_the_maximum():
    # uint8(255 * 0.5) = 127; at t = 0.5 the cut is int(0.5 * 255) = 127 and 127 > 127 is false,
    # while clean keeps 0.5 >= 0.5. A map whose maximum is 0.5 (uint8 127) is cut at
    # int(0.5 * 127) = 63: 0.25 (uint8 63) is out, 0.26 (uint8 66) is in.
    maps = np.array([[[1.0, 0.5, 0.0]], [[0.5, 0.26, 0.25]]])
    np.testing.assert_array_equal(bx.binarise(maps, [0.5], "wsolevaluation")[:, 0, 0],
                                  [[True, False, False], [True, True, False]])
    np.testing.assert_array_equal(bx.binarise(maps, [0.5], "clean")[:, 0, 0],
                                  [[True, True, False], [True, False, False]])


def test_an_empty_threshold_is_the_box_at_pixel_0_0_under_wsolevaluation():
    # All-zero map: nothing is foreground at any threshold. wsolevaluation's box (0, 0, 0, 0) is
    # one pixel inside the 2x2 ground truth at the corner: IoU 1/4. Clean proposes no box: 0.
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 0:2, 0:2] = 1
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.0, 0.5], convention="wsolevaluation"),
                               [[0.25, 0.25]])
    np.testing.assert_allclose(loc.best_box_iou(maps, masks, [0.5], convention="clean"), [[0.0]])


def test_pxap_with_a_grid_not_starting_at_0():
    # The pixels of test_pxap_hand_case, grid {0.5}: lesion scores 1, 1, 0.6, 0.2; 0.8 twice outside.
    #   clean (recall over all 4 lesion pixels): t=1: P 1, R 1/2; t=0.5: P 3/5, R 3/4
    #       AP = 1/2 + 3/5 * 1/4 = 0.65.
    #   wsolevaluation (the 0.2 pixel and every 0 pixel fall below the first bin, uncounted):
    #       t=1: P 1, R 2/3; t=0.5: P 3/5, R 1  ->  AP = 2/3 + 3/5 * 1/3 = 13/15.
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 0, 0:4] = 1
    maps[0, 0, 0:4] = [1.0, 1.0, 0.6, 0.2]
    maps[0, 5, 5] = maps[0, 6, 6] = 0.8
    assert loc.pxap(maps, masks, [0.5], convention="clean") == pytest.approx(0.65)
    assert loc.pxap(maps, masks, [0.5], convention="wsolevaluation") == pytest.approx(13 / 15)
    precision, recall, _ = loc.pixel_precision_recall(maps, masks, [0.5], convention="wsolevaluation")
    np.testing.assert_allclose(recall, [2 / 3, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.6])
    # From 0 the two agree (the test above: 0.665625).
    for convention in loc.CONVENTIONS:
        assert loc.pxap(maps, masks, [0.0, 0.5], convention=convention) == pytest.approx(0.665625)
    # No lesion pixel at or above the grid: undefined there, a clear error.
    with pytest.raises(ValueError, match="lowest threshold"):
        loc.pxap(np.where(masks == 1, 0.1, maps), masks, [0.5], convention="wsolevaluation")


def test_localisation_metrics_records_its_convention():
    maps, masks = _box_hand_case()
    default = loc.localisation_metrics(maps, masks, tau=0.5, thresholds=[0.25, 0.75])
    assert default["box_convention"] == "wsolevaluation"
    clean = loc.localisation_metrics(maps, masks, tau=0.5, thresholds=[0.25, 0.75], convention="clean")
    assert clean["box_convention"] == "clean"
    wsol = loc.max_box_accuracy(maps, masks, [0.25, 0.75], convention="wsolevaluation")
    assert default["maxboxacc_v2"] == pytest.approx(wsol.mean())
    assert loc.localisation_metrics(maps, np.zeros_like(masks), tau=0.5)["box_convention"] == "wsolevaluation"
    with pytest.raises(ValueError, match="convention must be one of"):
        loc.localisation_metrics(maps, masks, tau=0.5, convention="opencv")


def test_wsolevaluation_boxes_equal_opencv():
    """OpenCV's contours (what wsolevaluation calls) are the reference. OpenCV is in the test extra
    (pyproject.toml), not a dependency of the package: this test fails, not skips, without it."""
    import cv2
    rng = np.random.default_rng(7)
    maps = np.concatenate([rng.random((4, 16, 16)), np.round(rng.random((4, 16, 16)) * 6) / 6])
    masks = np.stack([_random_maps_and_masks(s, n=1, size=16)[1][0] for s in range(8)])
    thresholds = np.arange(0, 1, 0.05)
    expected = np.zeros((len(maps), len(thresholds)))
    for i, (image, mask) in enumerate(zip(maps, masks)):
        _, gt = bx.component_boxes(mask.astype(bool))
        scoremap_u8 = (image * 255).astype(np.uint8)
        for j, t in enumerate(thresholds):
            _, binary = cv2.threshold(scoremap_u8, int(t * scoremap_u8.max()), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            rects = [cv2.boundingRect(c) for c in contours] or [(0, 0, 0, 0)]
            proposed = np.array([[y, x, min(y + h, 15), min(x + w, 15)] for x, y, w, h in rects])
            expected[i, j] = bx.box_iou(proposed[:, None], gt[None]).max()
    np.testing.assert_array_equal(loc.best_box_iou(maps, masks, thresholds, convention="wsolevaluation"), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_all_threshold_sweep_proposes_the_boxes_of_labelling_each_threshold(seed, monkeypatch):
    """`boxes.wsolevaluation_boxes_all_thresholds` (runs of every cut joined in one graph) against
    `candidate_boxes` on each thresholded map (scipy labelling, one per threshold), box for box:
    noise, quantised maps (ties, thresholds sharing a cut), a dim map (peak 10 of 255, many
    thresholds on one cut), smooth upsampled blobs with holes, an all-zero map, non-square."""
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.random((3, 6, 5)), np.ones((6, 6)))
    smooth = np.stack([np.convolve(row, np.ones(3) / 3, mode="same") for row in smooth.reshape(-1, 30)])
    maps = np.concatenate([
        rng.random((2, 36, 30)), np.round(rng.random((2, 36, 30)) * 5) / 5, rng.random((1, 36, 30)) * 0.04,
        smooth.reshape(3, 36, 30) / smooth.max(), np.zeros((1, 36, 30))])
    ring = np.zeros((36, 30))
    ring[5:20, 5:20], ring[9:14, 9:14] = 1.0, 0.2   # a blob with a hole at most cuts
    maps[-2] = ring
    thresholds = np.append(np.arange(0, 1, 0.01), 1.0)

    def as_set(plane, boxes):
        return sorted(map(tuple, np.concatenate([plane, boxes], axis=1).tolist()))

    expected = bx.candidate_boxes(bx.binarise(maps, thresholds, "wsolevaluation"), "wsolevaluation")
    assert as_set(*bx.wsolevaluation_boxes_all_thresholds(maps, thresholds)) == as_set(*expected)
    monkeypatch.setattr(bx, "_EVENT_BUDGET", 50)   # one image per graph: the grouping changes nothing
    assert as_set(*bx.wsolevaluation_boxes_all_thresholds(maps, thresholds)) == as_set(*expected)


def test_localisation_metrics_from_precomputed_box_ious_and_curve_are_the_same():
    """evaluate computes MaxBoxAccV2's box IoUs and the PR curve once per map and hands them to
    `localisation_metrics` and the per-body-part tables: the numbers must be those computed afresh."""
    from pcam_jax.evaluation import by_body_part

    maps, masks = _random_maps_and_masks(4, n=8, size=16, blobs=2)
    fresh = loc.localisation_metrics(maps, masks, tau=0.5, tolerance=2.0)
    box_ious = loc.best_box_iou(maps, masks)
    curve = loc.pixel_precision_recall(maps, masks)[:2]
    assert loc.localisation_metrics(maps, masks, tau=0.5, tolerance=2.0, box_ious=box_ious, pr_curve=curve) == fresh
    groups = np.array(["hand", "leg"] * 4)
    per_group = by_body_part.localisation_per_group({"m": maps}, masks, groups, {"m": 0.5}, 2.0)
    assert by_body_part.localisation_per_group({"m": maps}, masks, groups, {"m": 0.5}, 2.0,
                                               box_ious={"m": box_ious}) == per_group
    with pytest.raises(ValueError, match="box_ious has shape"):
        loc.localisation_metrics(maps, masks, tau=0.5, box_ious=box_ious[:, :3])
