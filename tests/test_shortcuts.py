"""Counterfactual shortcut evaluation: fake models whose reliance is known, hand-made masks."""

import itertools
import json

import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from pcam_jax.configs import tiny
from pcam_jax.data import synthetic_splits
from pcam_jax.evaluation import shortcuts

NUM_LIMBS = 6


@pytest.fixture(scope="module")
def config():
    c = tiny.get_config().synthetic
    c.image_size = 48
    return c


@pytest.fixture(scope="module")
def rendered(config):
    return shortcuts.render_counterfactuals(config, NUM_LIMBS)


def lookup_model(rendered, weights, offset=0.05):
    """predict(images) = offset + sum_f weights[f] * [image shows f], read from the true masks."""
    truth = {}
    for c, cell in enumerate(rendered["cells"]):
        for i in range(NUM_LIMBS):
            shows = dict(lesion=rendered["lesion_mask"][c, i].any(), marker=rendered["marker_mask"][c, i].any(),
                         hardware=rendered["hardware_mask"][c, i].any())
            truth[rendered["image"][c, i].tobytes()] = offset + sum(w * shows[f] for f, w in weights.items())

    def predict(images):
        return np.array([truth[im.tobytes()] for im in images])
    return predict


def test_heldout_limbs_lie_past_every_split(config):
    plan = synthetic_splits.make_split_plan(config)
    last = max(item.index for items in plan.values() for item in items)
    start = shortcuts.first_heldout_index(config)
    assert start > last and start == 1_000_000
    big = ml_collections.ConfigDict(dict(config.to_dict(), num_train=1_500_000))
    assert shortcuts.first_heldout_index(big) == 2_000_000


def test_render_cells_switch_exactly_one_factor_each(rendered):
    assert rendered["image"].shape == (8, NUM_LIMBS, 48, 48) and rendered["image"].dtype == np.uint8
    for c, (lesion, marker, hardware) in enumerate(rendered["cells"]):
        assert rendered["lesion_mask"][c].any(axis=(1, 2)).tolist() == [bool(lesion)] * NUM_LIMBS
        assert rendered["marker_mask"][c].any(axis=(1, 2)).tolist() == [bool(marker)] * NUM_LIMBS
        assert rendered["hardware_mask"][c].any(axis=(1, 2)).tolist() == [bool(hardware)] * NUM_LIMBS
    # Same limb: the lesion-free, hardware-free renders differ only where the marker is drawn.
    plain, marked = rendered["image"][0].astype(int), rendered["image"][2].astype(int)
    near_marker = scipy.ndimage.binary_dilation(rendered["marker_mask"][2], iterations=3, axes=(1, 2))
    assert np.all((plain == marked) | near_marker)


def test_marker_only_model_ignores_lesions(rendered, config):
    report = shortcuts.shortcut_report(lookup_model(rendered, dict(marker=0.8)), None, config, rendered=rendered)
    assert report["lesion_auroc"]["pooled"] == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in report["lesion_auroc"]["per_cell"].values())
    assert report["marker"]["auroc_normal"] == pytest.approx(1.0)
    assert report["marker"]["effect"] == pytest.approx(0.8)
    assert report["hardware"]["effect"] == pytest.approx(0.0)
    assert report["hardware"]["auroc_normal"] == pytest.approx(0.5)
    assert report["mean_probability"]["lesion=1,marker=0,hardware=1"] == pytest.approx(0.05)
    json.dumps(report)


def test_lesion_only_model_scores_lesions_and_no_marker_effect(rendered, config):
    report = shortcuts.shortcut_report(lookup_model(rendered, dict(lesion=0.9)), None, config, rendered=rendered)
    assert report["lesion_auroc"]["pooled"] == pytest.approx(1.0)
    assert report["lesion_paired_win_rate"] == pytest.approx(1.0)
    assert report["marker"]["effect"] == pytest.approx(0.0)
    assert report["marker"]["auroc_normal"] == pytest.approx(0.5)


def test_stratified_lesion_auroc_holds_confounders_equal(rendered, config):
    # Marker outweighs lesion: pooled over all images a marked normal limb (0.65) outranks an
    # unmarked lesion (0.35), but within every (marker, hardware) cell the lesion always wins.
    predict = lookup_model(rendered, dict(lesion=0.3, marker=0.6, hardware=0.02))
    report = shortcuts.shortcut_report(predict, None, config, rendered=rendered)
    assert report["lesion_auroc"]["pooled"] == pytest.approx(1.0)
    assert report["marker"]["effect"] == pytest.approx(0.6)
    assert report["hardware"]["effect_normal"] == pytest.approx(0.02)
    assert report["mean_probability"]["lesion=1,marker=1,hardware=0"] == pytest.approx(0.95)


def test_stratified_auroc_matches_pair_loop():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60) / 4.0  # probabilities with many ties
    positive = rng.random(60) < 0.4
    strata = rng.integers(0, 3, 60)
    wins = pairs = 0
    for i, j in itertools.product(range(60), repeat=2):
        if positive[i] and not positive[j] and strata[i] == strata[j]:
            pairs += 1
            wins += (scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j])
    assert shortcuts.stratified_auroc(scores, positive, strata) == pytest.approx(wins / pairs)
    assert np.isnan(shortcuts.stratified_auroc([1.0, 2.0], [True, False], [0, 1]))


def test_argmax_categories_follow_the_priority():
    def masks(*pixels):
        m = np.zeros((1, 6, 6), bool)
        for y, x in pixels:
            m[0, y, x] = True
        return m
    lesion, marker, hardware = masks((1, 1)), masks((1, 1), (4, 4)), masks((4, 4), (0, 5))
    bone = masks((1, 1), (4, 4), (0, 5), (3, 0))
    def category(y, x, tolerance=0.0):
        m = np.zeros((1, 6, 6))
        m[0, y, x] = 1.0
        return shortcuts.CATEGORIES[shortcuts.argmax_categories(m, lesion, marker, hardware, bone, tolerance)[0]]
    assert category(1, 1) == "lesion"       # in every mask: lesion first
    assert category(4, 4) == "marker"       # marker before hardware
    assert category(0, 5) == "hardware"     # hardware before bone
    assert category(3, 0) == "bone"
    assert category(5, 0) == "background"
    assert category(2, 2) == "background"
    assert category(2, 2, tolerance=1.5) == "lesion"   # (1, 1) lies sqrt(2) away
    assert category(2, 1, tolerance=1.0) == "lesion"
    assert category(3, 3, tolerance=1.0) == "background"  # (4, 4) is sqrt(2) away


def test_dilate_matches_scipy_disk():
    rng = np.random.default_rng(1)
    m = rng.random((2, 12, 12)) < 0.05
    yy, xx = np.mgrid[-2:3, -2:3]
    disk = yy**2 + xx**2 <= 2.5**2
    expected = np.stack([scipy.ndimage.binary_dilation(p, structure=disk) for p in m])
    np.testing.assert_array_equal(shortcuts.dilate(m, 2.5), expected)


def test_driver_argmax_shares_from_fake_maps(rendered, config):
    def maps(images):  # "lesion" map points at the true lesion, "marker" map at the marker
        index = {rendered["image"][c, i].tobytes(): (c, i) for c in range(8) for i in range(NUM_LIMBS)}
        where = [index[im.tobytes()] for im in images]
        return {name: np.stack([rendered[f"{name}_mask"][c, i].astype(float) for c, i in where])
                for name in ("lesion", "marker")}
    report = shortcuts.shortcut_report(lookup_model(rendered, {}), maps, config, rendered=rendered,
                                       tolerance=0.0)
    for name in ("lesion", "marker"):
        for cell, shares in report["argmax"][name]["per_cell"].items():
            if f"{name}=1" in cell:
                assert shares[name] == 1.0, (name, cell, shares)
    assert sum(report["argmax"]["lesion"]["all"].values()) == pytest.approx(1.0)
    json.dumps(report)


def test_default_tolerance_scales_the_pointing_game_radius(rendered, config):
    report = shortcuts.shortcut_report(lookup_model(rendered, {}), None, config, rendered=rendered)
    assert report["tolerance"] == pytest.approx(15 * 48 / 320, abs=0.05)
