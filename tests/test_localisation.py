"""Localisation metrics against hand-computed 8x8 cases and slow pixel loops written here."""

import math

import numpy as np
import pytest

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


def _flood_fill_boxes(binary):
    """Boxes (y0, x0, y1, x1) of 8-connected components by an explicit stack flood fill."""
    h, w = binary.shape
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
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
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


def _slow_max_box_accuracy(maps, masks, thresholds, iou_thresholds=(0.3, 0.5, 0.7)):
    correct = np.zeros((len(iou_thresholds), len(thresholds)))
    for image, mask in zip(maps, masks):
        gt_boxes = _flood_fill_boxes(mask.astype(bool))
        for j, t in enumerate(thresholds):
            best = 0.0
            for box in _flood_fill_boxes(image >= t):
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
    best = loc.best_box_iou(maps, masks, thresholds=[0.25, 0.75])
    np.testing.assert_allclose(best, [[2 / 3, 2 / 3], [0.36, 1.0]])
    # delta 0.3: both images correct at either t -> 1.
    # delta 0.5: t=0.25 image 0 only (1/2), t=0.75 both -> 1.
    # delta 0.7: t=0.25 none, t=0.75 image 1 only -> 1/2.   V2 = (1 + 1 + 0.5) / 3.
    accuracy = loc.max_box_accuracy(maps, masks, thresholds=[0.25, 0.75])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 0.5])
    metrics = loc.localisation_metrics(maps, masks, tau=0.5, thresholds=[0.25, 0.75])
    assert metrics["maxboxacc_v2"] == pytest.approx(2.5 / 3)
    assert metrics["maxboxacc_iou70"] == pytest.approx(0.5)


def test_components_are_eight_connected():
    binary = np.zeros((1, 5, 5), bool)
    binary[0, 0, 0] = binary[0, 1, 1] = True  # diagonal neighbours: one component
    binary[0, 4, 4] = True
    plane, boxes = loc._component_boxes(binary)
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
    expected = _slow_max_box_accuracy(maps, masks, thresholds)
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, thresholds), expected)
    # Chunking the label volume (images per scipy call) must not change the answer.
    monkeypatch.setattr(loc, "_LABEL_CHUNK_VOXELS", 2 * 100 * len(thresholds))
    np.testing.assert_allclose(loc.max_box_accuracy(maps, masks, thresholds), expected)


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
