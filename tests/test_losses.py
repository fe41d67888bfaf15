"""Each loss on a hand-computed case; attention_map against a numpy loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax import maps
from pcam_jax.training import losses
from tests.reference_loops import bilinear_loop

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_cross_entropy_hand_computed():
    # row 0: logits (0, 0), label 0: softmax (1/2, 1/2) -> -ln(1/2) = ln 2
    # row 1: logits (ln 3, 0), label 1: softmax (3/4, 1/4) -> -ln(1/4) = ln 4 = 2 ln 2
    # row 2: padding (valid False) with a huge loss (200) that must not count
    logits = jnp.array([[0.0, 0.0], [LN3, 0.0], [100.0, -100.0]])
    labels = jnp.array([0, 1, 1])
    valid = jnp.array([True, True, False])
    # unweighted: (ln 2 + 2 ln 2) / 2 = 1.5 ln 2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, valid=valid), 1.5 * LN2, rtol=1e-6)
    # weights (0.5, 2): (0.5 ln 2 + 2 * 2 ln 2) / 2 valid rows = 2.25 ln 2
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, jnp.array([0.5, 2.0]), valid), 2.25 * LN2,
                               rtol=1e-6)
    # without valid every row counts: (ln 2 + 2 ln 2 + 200) / 3
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), (3 * LN2 + 200.0) / 3, rtol=1e-5)
    # no valid row: 0, not NaN
    assert float(losses.cross_entropy(logits, labels, valid=jnp.zeros(3, bool))) == 0.0


def test_class_weights_average_to_one():
    # p = 0.25 abnormal: w = (0.5 / 0.75, 0.5 / 0.25) = (2/3, 2); 0.75 * 2/3 + 0.25 * 2 = 1
    w = np.asarray(losses.class_weights(0.25))
    np.testing.assert_allclose(w, [2 / 3, 2.0], rtol=1e-6)
    np.testing.assert_allclose(0.75 * w[0] + 0.25 * w[1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.class_weights(0.5), [1.0, 1.0])
    with pytest.raises(ValueError, match="abnormal_fraction"):
        losses.class_weights(0.0)


def test_soft_mask_closed_form():
    a = jnp.array([0.5, 0.6, 0.0, 1.0])
    # sigmoid(10 * (a - 0.5)) = sigmoid(0), sigmoid(1), sigmoid(-5), sigmoid(5)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    np.testing.assert_allclose(losses.soft_mask(a), [0.5, sig(1.0), sig(-5.0), sig(5.0)], rtol=1e-6)
    np.testing.assert_allclose(losses.soft_mask(a, omega=2.0, sigma=0.0), [sig(1.0), sig(1.2), 0.5, sig(2.0)],
                               rtol=1e-6)


def test_confidence_weight_closed_form_and_stop_gradient():
    np.testing.assert_allclose(losses.confidence_weight(jnp.array([0.0, 0.5, 1.0])),
                               [1 / math.e, math.exp(-0.5), 1.0], rtol=1e-6)
    assert float(jax.grad(losses.confidence_weight)(0.7)) == 0.0


def test_masked_images_keep_and_erase():
    images = jnp.array([[0.2, 0.4], [0.6, 0.8]])[None, :, :, None]
    mask = jnp.array([[1.0, 0.0], [0.5, 0.25]])[None]
    # keep: I * T = [[0.2, 0], [0.3, 0.2]]; erase: I - I * T = [[0, 0.4], [0.3, 0.6]]
    np.testing.assert_allclose(losses.masked_images(images, mask, "keep")[0, ..., 0], [[0.2, 0.0], [0.3, 0.2]],
                               rtol=1e-6)
    np.testing.assert_allclose(losses.masked_images(images, mask, "erase")[0, ..., 0], [[0.0, 0.4], [0.3, 0.6]],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="mask_mode"):
        losses.masked_images(images, mask, "crop")


def test_attention_loss_hand_computed():
    # row 0: label 1, logits (0, ln 3): softmax (1/4, 3/4): CE ln(4/3), abnormal prob 3/4
    # row 1: label 0, logits (ln 3, 0): softmax (3/4, 1/4): CE ln(4/3), abnormal prob 1/4
    # row 2: label 1, logits (ln 3, 0): CE ln 4, abnormal prob 1/4
    # row 3: label 1, padding (valid False)
    logits = jnp.array([[0.0, LN3], [LN3, 0.0], [LN3, 0.0], [-50.0, 50.0]])
    labels = jnp.array([1, 0, 1, 1])
    valid = jnp.array([True, True, True, False])
    keep_abnormal = (math.log(4 / 3) + math.log(4)) / 2          # rows 0, 2
    keep_all = (2 * math.log(4 / 3) + math.log(4)) / 3           # rows 0, 1, 2
    erase_abnormal = (3 / 4 + 1 / 4) / 2                          # = 0.5
    erase_all = (3 / 4 + 1 / 4 + 1 / 4) / 3                       # = 5/12
    got = lambda mode, ab: float(losses.attention_loss(logits, labels, mode, ab, valid))
    np.testing.assert_allclose(got("keep", True), keep_abnormal, rtol=1e-6)
    np.testing.assert_allclose(got("keep", False), keep_all, rtol=1e-6)
    np.testing.assert_allclose(got("erase", True), erase_abnormal, rtol=1e-6)
    np.testing.assert_allclose(got("erase", False), erase_all, rtol=1e-6)
    # no abnormal row: L2 = 0, not NaN
    assert float(losses.attention_loss(logits, jnp.zeros(4, jnp.int32), "keep", True, valid)) == 0.0


def test_lesion_loss_hand_computed():
    pred = jnp.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    mask = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    # image 0: squared errors 0, 1, 0.25, 0.25 -> 0.375; image 1 (not valid): 1; image 2: 0.25
    valid = jnp.array([True, False, True])
    np.testing.assert_allclose(losses.lesion_loss(pred, mask, valid), (0.375 + 0.25) / 2, rtol=1e-6)
    np.testing.assert_allclose(losses.lesion_loss(pred, mask), (0.375 + 1.0 + 0.25) / 3, rtol=1e-6)
    assert float(losses.lesion_loss(pred, mask, jnp.zeros(3, bool))) == 0.0


def test_balanced_lesion_loss_hand_computed():
    pred = jnp.array([[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.0], [0.0, 0.0]]])
    mask = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # image 0: lesion errors 0, 1 -> 0.5; background 0.25, 0.25 -> 0.25; balanced 0.375
    # image 1 (empty mask): background only, errors 0.25, 0, 0, 0 -> 0.0625
    np.testing.assert_allclose(losses.lesion_loss(pred, mask, balanced=True), (0.375 + 0.0625) / 2, rtol=1e-6)
    # A lesion of 1 pixel in 100: predicting 0 everywhere costs 0.01 with MSE, 0.5 balanced.
    tiny = jnp.zeros((1, 10, 10)).at[0, 3, 3].set(1.0)
    np.testing.assert_allclose(losses.lesion_loss(jnp.zeros_like(tiny), tiny), 0.01, rtol=1e-6)
    np.testing.assert_allclose(losses.lesion_loss(jnp.zeros_like(tiny), tiny, balanced=True), 0.5, rtol=1e-6)


def test_balanced_cross_entropy_lesion_loss_hand_computed():
    pred = jnp.array([[[0.9, 0.2], [0.5, 0.1]], [[0.5, 0.2], [0.2, 0.2]]])
    mask = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # image 0: lesion -log 0.9, -log 0.2; background -log 0.5, -log 0.9; the mean of the two means
    lesion, background = (-math.log(0.9) - math.log(0.2)) / 2, (-math.log(0.5) - math.log(0.9)) / 2
    # image 1 (empty mask): background only
    empty = (-math.log(0.5) - 3 * math.log(0.8)) / 4
    got = losses.lesion_loss(pred, mask, balanced=True, cross_entropy=True)
    np.testing.assert_allclose(got, ((lesion + background) / 2 + empty) / 2, rtol=1e-5)
    # Gradient with respect to the logit z (D = sigmoid(z)): D - M for cross-entropy, which stays
    # large where the map saturates; the squared error's 2 (D - M) D (1 - D) vanishes there.
    z = jnp.array([[[6.0]]])
    background_pixel = jnp.zeros((1, 1, 1))
    bce = jax.grad(lambda z: losses.lesion_loss(jax.nn.sigmoid(z), background_pixel, cross_entropy=True))(z)
    mse = jax.grad(lambda z: losses.lesion_loss(jax.nn.sigmoid(z), background_pixel))(z)
    d = 1 / (1 + math.exp(-6.0))
    np.testing.assert_allclose(float(bce[0, 0, 0]), d, rtol=1e-4)
    np.testing.assert_allclose(float(mse[0, 0, 0]), 2 * d * d * (1 - d), rtol=1e-4)
    # A saturated prediction is clipped, not infinite.
    assert np.isfinite(float(losses.lesion_loss(jnp.ones((1, 2, 2)), jnp.zeros((1, 2, 2)), cross_entropy=True)))


def test_cross_entropy_dice_lesion_loss_hand_computed():
    pred = jnp.array([[[0.9, 0.2], [0.5, 0.1]], [[0.5, 0.2], [0.2, 0.2]]])
    mask = jnp.array([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # image 0: balanced cross-entropy, plus 1 - (2 * 1.1 + 1) / (1.7 + 2 + 1)
    lesion, background = (-math.log(0.9) - math.log(0.2)) / 2, (-math.log(0.5) - math.log(0.9)) / 2
    dice0 = 1 - (2 * (0.9 + 0.2) + 1) / ((0.9 + 0.2 + 0.5 + 0.1) + 2 + 1)
    # image 1 (empty mask): its background cross-entropy alone, no Dice term
    empty = (-math.log(0.5) - 3 * math.log(0.8)) / 4
    got = losses.lesion_loss(pred, mask, balanced=True, cross_entropy=True, dice=True)
    np.testing.assert_allclose(got, ((lesion + background) / 2 + dice0 + empty) / 2, rtol=1e-5)
    # the plain cross-entropy's mean over all four pixels, plus the same Dice
    plain0 = (2 * lesion + 2 * background) / 4
    np.testing.assert_allclose(losses.lesion_loss(pred, mask, cross_entropy=True, dice=True),
                               (plain0 + dice0 + empty) / 2, rtol=1e-5)
    np.testing.assert_allclose(losses.soft_dice_loss(pred, mask), [dice0, 0.0], rtol=1e-5)
    # Painted area costs relative to the lesion: a 1-pixel lesion found, plus 20 pixels painted
    # around it, costs a Dice loss of 1 - 3 / 23 against 1 - 3 / 3 = 0 for the lesion alone.
    lesion = jnp.zeros((1, 10, 10)).at[0, 3, 3].set(1.0)
    painted = lesion.at[0, 5:7, :].set(1.0)
    np.testing.assert_allclose(losses.soft_dice_loss(lesion, lesion), [0.0], atol=1e-6)
    np.testing.assert_allclose(losses.soft_dice_loss(painted, lesion), [1 - 3 / 23], rtol=1e-5)


def test_stage_loss_and_accuracy():
    # (1 - 0.25) * 2 + 0.25 * 1 + 2 * 0.5 = 1.5 + 0.25 + 1 = 2.75
    np.testing.assert_allclose(losses.stage_loss(2.0, 1.0, 0.5, 0.25, 2.0), 2.75, rtol=1e-7)
    logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = jnp.array([0, 0, 0, 1])
    # rows 0, 2, 3 right, row 1 wrong; row 2 not valid -> 2 of 3
    np.testing.assert_allclose(losses.accuracy(logits, labels, jnp.array([True, True, False, True])), 2 / 3)


def _numpy_attention(features, kernel, height, width, logit_difference):
    w = kernel[:, 1] - kernel[:, 0] if logit_difference else kernel[:, 1]
    cam = np.zeros(features.shape[:3])
    for k in range(features.shape[-1]):
        cam += max(w[k], 0.0) * features[..., k]
    up = bilinear_loop(cam, height, width)
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return (up - lo) / (span + 1e-7)


@pytest.mark.parametrize("logit_difference", [False, True])
def test_attention_map_matches_numpy(logit_difference):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 2, size=(2, 4, 4, 3)).astype(np.float32)
    # mixed signs so the ReLU of the weights matters
    kernel = np.array([[0.5, 1.0], [0.3, -0.7], [-0.2, 0.4]], np.float32)
    got = maps.attention_map(jnp.asarray(features), jnp.asarray(kernel), (8, 8), logit_difference)
    want = _numpy_attention(features.astype(np.float64), kernel.astype(np.float64), 8, 8, logit_difference)
    assert got.shape == (2, 8, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_map_of_a_flat_map_is_zero_with_finite_gradient():
    features = jnp.ones((1, 4, 4, 3))
    kernel = jnp.array([[0.5, 1.0], [0.3, -0.7], [-0.2, 0.4]])
    np.testing.assert_array_equal(maps.attention_map(features, kernel, (8, 8)), 0.0)
    grad = jax.grad(lambda f: jnp.sum(losses.soft_mask(maps.attention_map(f, kernel, (8, 8)))))(features)
    assert np.all(np.isfinite(grad))


def test_hard_background_term_is_the_mean_of_the_worst_background_pixels():
    """Hand case: a 4x4 map (16 px), f = 0.2 -> k = ceil(3.2) = 4 worst background errors."""
    pred = np.zeros((1, 4, 4), np.float32)
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, 0, 0] = 1.0                      # the lesion pixel, predicted 0: error 1, not background
    pred[0, 3, :] = [0.9, 0.8, 0.5, 0.1]     # a bright non-lesion stripe (the "hardware")
    pred[0, 2, 0] = 0.3
    hard = float(losses.hard_background_term(jnp.square(jnp.asarray(pred) - mask), jnp.asarray(mask), 0.2)[0])
    assert hard == pytest.approx((0.81 + 0.64 + 0.25 + 0.09) / 4, rel=1e-6)
    # added to the balanced L3 per image: 0.5 * (lesion 1.0 + background mean) + hard
    background = (0.81 + 0.64 + 0.25 + 0.01 + 0.09) / 15
    got = float(losses.lesion_loss(jnp.asarray(pred), jnp.asarray(mask), balanced=True, hard_background=0.2))
    assert got == pytest.approx(0.5 * (1.0 + background) + hard, rel=1e-6)
    assert float(losses.lesion_loss(jnp.asarray(pred), jnp.asarray(mask), balanced=True)) == \
        pytest.approx(0.5 * (1.0 + background), rel=1e-6)
