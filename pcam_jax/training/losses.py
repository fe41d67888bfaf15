"""The losses of the three stages (docs/METHOD.md section 1) as pure functions: arrays in, arrays out.

Conventions: ``logits`` (B, C) with C = 2 (0 = normal, 1 = abnormal); ``labels`` (B,) int;
``valid`` (B,) bool marks the rows that count (padding rows of a last batch do not). Every
mean is over the rows that contribute and is 0 when no row does, so a batch without, say,
abnormal images gives L2 = 0 rather than NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

ABNORMAL = 1
MASK_MODES = ("keep", "erase")


def check_mask_mode(mode: str) -> None:
    """The masked pass keeps (``I * T(A)``, the paper) or erases (``I - I * T(A)``, GAIN) the attended area."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r} (config.stage2.mask_mode)")


def _rows(valid: Array | None, batch_size: int) -> Array:
    """Float (B,) row weights: 1 for rows that count, 0 otherwise."""
    if valid is None:
        return jnp.ones((batch_size,), jnp.float32)
    return valid.astype(jnp.float32)


def _mean_over_rows(per_row: Array, rows: Array) -> Array:
    """sum_i rows_i * per_row_i / sum_i rows_i, and 0 when no row counts."""
    return jnp.sum(rows * per_row) / jnp.maximum(jnp.sum(rows), 1.0)


def cross_entropy(logits: Array, labels: Array, weights: Array | None = None,
                  valid: Array | None = None) -> Array:
    """Softmax cross-entropy, optionally class-weighted, averaged over the valid rows.

    ``L = sum_i v_i * w[y_i] * (-log softmax(z_i)[y_i]) / sum_i v_i``

    Args:
      logits: (B, C).
      labels: (B,) int class indices.
      weights: optional (C,) per-class weights (``w = 1`` when None). Note the denominator is
        the number of valid rows, not the sum of the weights: weights that average to one over
        the data (as `class_weights` gives) keep the loss on the unweighted scale.
      valid: optional (B,) bool.
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if weights is not None:
        nll = nll * jnp.asarray(weights, jnp.float32)[labels]
    return _mean_over_rows(nll, _rows(valid, logits.shape[0]))


def class_weights(abnormal_fraction: float) -> Array:
    """Inverse-frequency class weights ``w_c = 0.5 / freq_c`` for (normal, abnormal).

    They average to one over the data: ``(1 - p) * 0.5 / (1 - p) + p * 0.5 / p = 1``, and their
    ratio ``w_abnormal / w_normal = (1 - p) / p`` is that of the MURA baseline's weighted loss
    (``w_abnormal = |N| / (|A| + |N|)``, ``w_normal = |A| / (|A| + |N|)``).
    """
    p = float(abnormal_fraction)
    if not 0.0 < p < 1.0:
        raise ValueError(f"abnormal_fraction must be in (0, 1), got {p}: set config.stage1.abnormal_fraction "
                         "to the share of abnormal images in the training split")
    return jnp.asarray([0.5 / (1.0 - p), 0.5 / p], jnp.float32)


def soft_mask(attention: Array, omega: float = 10.0, sigma: float = 0.5) -> Array:
    """``T(A) = sigmoid(omega * (A - sigma))``, a differentiable threshold of A at sigma."""
    return jax.nn.sigmoid(omega * (attention - sigma))


def masked_images(images: Array, mask: Array, mode: str) -> Array:
    """The masked-pass input: ``keep``: ``I * T(A)`` (the paper); ``erase``: ``I - I * T(A)`` (GAIN).

    Args:
      images: (B, H, W, 1) in [0, 1].
      mask: (B, H, W) soft mask T(A) in [0, 1].
    """
    check_mask_mode(mode)
    kept = images * mask[..., None]
    return kept if mode == "keep" else images - kept


def confidence_weight(accuracy: Array) -> Array:
    """``lambda = e^P / e = exp(P - 1)``, a stop-gradient scalar in [1/e, 1] for P in [0, 1]."""
    return jax.lax.stop_gradient(jnp.exp(jnp.asarray(accuracy, jnp.float32) - 1.0))


def attention_loss(masked_logits: Array, labels: Array, mode: str, abnormal_only: bool = True,
                   valid: Array | None = None) -> Array:
    """L2, the loss of the masked pass, averaged over the contributing rows (0 when none).

    Contributing rows: valid, and abnormal (``labels == 1``) when ``abnormal_only``.

    - ``keep``: cross-entropy of the true label on ``I * T(A)``:
      ``L2 = mean_i -log softmax(z*_i)[y_i]``: the attended area alone must carry the decision.
    - ``erase`` (GAIN's attention mining): the abnormal probability of what is left,
      ``L2 = mean_i softmax(z*_i)[abnormal]``, minimised: the map must cover all the evidence.

    Args:
      masked_logits: (B, C) logits of the masked pass.
      labels: (B,) int.
    """
    check_mask_mode(mode)
    rows = _rows(valid, masked_logits.shape[0])
    if abnormal_only:
        rows = rows * (labels == ABNORMAL).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(masked_logits.astype(jnp.float32), axis=-1)
    if mode == "keep":
        per_row = -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    else:
        per_row = jnp.exp(log_probs[:, ABNORMAL])
    return _mean_over_rows(per_row, rows)


# The decoder map's clip before a log (float32: sigmoid(z) rounds to 1 for z > ~17).
BCE_EPSILON = 1e-6
DICE_SMOOTH = 1.0   # pixels: keeps the soft Dice defined and smooth where D and M are near empty


def lesion_loss(pred_map: Array, mask: Array, valid: Array | None = None, balanced: bool = False,
                hard_background: float = 0.0, cross_entropy: bool = False, dice: bool = False) -> Array:
    """L3 = MSE between the decoder's lesion map and the lesion mask, over the valid images.

    ``L3 = sum_i v_i * mean_xy (D_i(x, y) - M_i(x, y))^2 / sum_i v_i`` (0 when no image counts).

    ``balanced=True`` (not the paper's) averages the squared error separately inside and
    outside each image's lesion and takes the mean of the two, so a lesion covering 1% of
    the pixels weighs as much as the background: with the plain MSE a decoder can reach a
    low loss by predicting 0 everywhere (seen on the synthetic demo). An image with an
    empty mask uses its background term alone.

    ``hard_background = f > 0`` (not the paper's) adds, per image, the mean squared error of the
    ``ceil(f * H * W)`` background pixels the decoder gets most wrong (online hard-negative mining):
    a few bright non-lesion pixels (hardware, a cast) weigh next to nothing in a mean over the whole
    background, and are exactly what a lesion decoder confuses (docs/RESULTS.md section 8).

    ``cross_entropy=True`` (not the paper's) puts the per-pixel binary cross-entropy
    ``-(M log D + (1 - M) log(1 - D))`` where the squared error was (same balancing, same hard
    background). Its gradient with respect to the decoder's logit is ``D - M``; the squared error's is
    ``2 (D - M) D (1 - D)``, which vanishes where the sigmoid saturates: a balanced-MSE decoder that
    paints a whole bone at ~0.99 gets next to no signal to rank the fracture above the rest of that
    bone (FracAtlas, docs/RESULTS.md section 6).

    ``dice=True`` (not the paper's; nnU-Net pairs it with cross-entropy) adds, per image with a lesion,
    the soft Dice loss ``1 - (2 sum D M + s) / (sum D + sum M + s)`` with ``s = DICE_SMOOTH``
    pixels. It prices a painted area against the lesion's own size, where the balanced mean
    prices it against the whole background: painting 20x the area of a median FracAtlas fracture
    (0.35 % of the image) touches 7 % of the background pixels, but caps the Dice score at
    2 / 22 (a loss of 0.91) even with the fracture found. An image with an empty mask has no Dice
    term. With the plain (unbalanced) cross-entropy beside it, a FracAtlas decoder died within 40
    steps (`guards.DeadDecoderGuard`): the Dice gradient vanishes with the sigmoid at 0.

    Args:
      pred_map: (B, H, W) in [0, 1].
      mask: (B, H, W) in {0, 1}.
      valid: optional (B,) bool, e.g. ``has_mask & valid``.
      balanced: lesion/background-balanced mean instead of the plain mean.
      hard_background: share of the pixels in the hard-background term (0: none).
      cross_entropy: per-pixel binary cross-entropy instead of the squared error.
      dice: add the soft Dice loss of each image with a lesion.
    """
    mask = mask.astype(jnp.float32)
    pred = pred_map.astype(jnp.float32)
    if cross_entropy:
        clipped = jnp.clip(pred, BCE_EPSILON, 1.0 - BCE_EPSILON)
        error = -(mask * jnp.log(clipped) + (1.0 - mask) * jnp.log1p(-clipped))
    else:
        error = jnp.square(pred - mask)
    if balanced:
        inside, outside = jnp.sum(mask, axis=(1, 2)), jnp.sum(1.0 - mask, axis=(1, 2))
        lesion_term = jnp.sum(error * mask, axis=(1, 2)) / jnp.maximum(inside, 1.0)
        background_term = jnp.sum(error * (1.0 - mask), axis=(1, 2)) / jnp.maximum(outside, 1.0)
        per_image = jnp.where(inside > 0, 0.5 * (lesion_term + background_term), background_term)
    else:
        per_image = jnp.mean(error, axis=(1, 2))
    if hard_background > 0:
        per_image = per_image + hard_background_term(error, mask, hard_background)
    if dice:
        per_image = per_image + soft_dice_loss(pred, mask)
    return _mean_over_rows(per_image, _rows(valid, pred_map.shape[0]))


def soft_dice_loss(pred: Array, mask: Array) -> Array:
    """(B,) ``1 - (2 sum D M + s) / (sum D + sum M + s)`` per image (``s = DICE_SMOOTH``); 0 for an
    image whose mask is empty (no lesion to overlap: its background is the other terms' business)."""
    lesion = jnp.sum(mask, axis=(1, 2))
    overlap = jnp.sum(pred * mask, axis=(1, 2))
    loss = 1.0 - (2.0 * overlap + DICE_SMOOTH) / (jnp.sum(pred, axis=(1, 2)) + lesion + DICE_SMOOTH)
    return jnp.where(lesion > 0, loss, 0.0)


def hard_background_term(error: Array, mask: Array, fraction: float) -> Array:
    """(B,) mean of the ``k = ceil(fraction * H * W)`` largest background errors of each image
    (lesion pixels count as 0; an image with fewer than k background pixels averages over k anyway)."""
    b, h, w = error.shape
    k = max(1, min(h * w, math.ceil(fraction * h * w)))
    background_errors = (error * (1.0 - mask)).reshape(b, h * w)
    return jnp.mean(jax.lax.top_k(background_errors, k)[0], axis=1)


def stage_loss(l1: Array, l2: Array, l3: Array, lam: Array, l3_weight: float) -> Array:
    """``L = (1 - lambda) * L1 + lambda * L2 + lambda' * L3`` (stage 2: lambda' = 0 or L3 = 0)."""
    return (1.0 - lam) * l1 + lam * l2 + l3_weight * l3


def accuracy(logits: Array, labels: Array, valid: Array | None = None) -> Array:
    """Share of the valid rows whose arg-max class is the label (0 when no row is valid)."""
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _mean_over_rows(correct, _rows(valid, logits.shape[0]))
