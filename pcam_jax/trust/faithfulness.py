"""Faithfulness of saliency maps: deletion / insertion curves, ROAD, average drop / increase.

Does removing the pixels a map highlights change the decision more than removing others?
Every function here is pure, batched and jit-able (``prob_fn``, step counts and ``chunk``
static), and runs on a batch sharded over a mesh's ``data`` axis. Shapes::

    images    (B, H, W, C)   what the model takes (pcam_jax: [0, 1] grey levels, C = 1)
    saliency  (B, H, W)      the map at image resolution (`pcam_jax.maps.postprocess`)
    prob_fn   (N, H, W, C) -> (N,)   probability of each image's target class

``prob_fn`` is called on batches shaped like ``images``: the perturbation steps are a
vmapped axis (``chunk`` steps per call, ``jax.lax.map`` over the chunks), so ``prob_fn`` may
close over per-image targets (see `target_probability`). Memory grows with
``chunk * B`` perturbed images.

Definitions:
- Deletion / insertion (Petsiuk et al., RISE, BMVC 2018): pixels ordered by the map,
  highest first (ties: raster order), replaced by the baseline (deletion) or copied from the
  image onto the baseline (insertion) in ``num_steps`` equal fractions; the curve has
  ``num_steps + 1`` points from 0 to all pixels, its AUC is the trapezoid rule over [0, 1].
  Faithful maps give a low deletion AUC and a high insertion AUC.
- ROAD (Rong et al., ICML 2022): remove the given fractions of the most (MoRF) or least
  (LeRF) relevant pixels, fill them by noisy linear imputation (`pcam_jax.trust.imputation`),
  read the probability. pytorch-grad-cam's ``percentile=q`` removes ``1 - q/100``.
- Average drop / increase in confidence (Chattopadhyay et al., WACV 2018): the image
  multiplied by the map; drop ``max(0, p - p_masked) / p``, increase ``p_masked > p``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.trust.imputation import noisy_linear_imputation

Array = jax.Array
ProbFn = Callable[[Array], Array]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # ROAD paper and pytorch-grad-cam


class FaithfulnessInputError(ValueError):
    """Images, maps or options that do not fit together."""


# ---------------------------------------------------------------------------------------------
# Inputs: the model as a probability function, baselines, pixel ranks.


def target_probability(logits_fn: Callable[[Array], Array], targets: Array) -> ProbFn:
    """``prob_fn(images) -> (B,)``: softmax probability of ``targets`` (B,) under ``logits_fn``.

    A one-hot contraction (no gather), so sharded targets work on explicit meshes.
    """
    def prob_fn(images):
        probs = jax.nn.softmax(logits_fn(images).astype(jnp.float32), axis=-1)
        return jnp.sum(probs * jax.nn.one_hot(targets, probs.shape[-1], dtype=probs.dtype), axis=-1)

    return prob_fn


def _gaussian_matrix(n: int, sigma: float, radius: int) -> np.ndarray:
    """(n, n) Gaussian smoothing along one axis, weights renormalised inside the image."""
    offsets = np.arange(n)[None, :] - np.arange(n)[:, None]
    m = np.where(np.abs(offsets) <= radius, np.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def blurred_baseline(images: Array, sigma: float = 5.0, radius: int = 5) -> Array:
    """Gaussian blur of (B, H, W, C) images (RISE's insertion substrate: 11 taps, sigma 5).

    Separable, as two matmuls; at the borders the weights are renormalised over the pixels
    inside the image (RISE pads with zeros, which darkens the border).
    """
    if sigma <= 0 or radius < 0:
        raise FaithfulnessInputError(f"blurred_baseline needs sigma > 0 and radius >= 0; got {sigma}, {radius}")
    rows = jnp.asarray(_gaussian_matrix(images.shape[1], sigma, radius))
    cols = jnp.asarray(_gaussian_matrix(images.shape[2], sigma, radius))
    return jnp.einsum("Hh,bhwc,Ww->bHWc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


def _as_baseline(baseline: Array | float, images: Array) -> Array:
    baseline = jnp.asarray(baseline, images.dtype)
    if baseline.ndim == 0:
        return jnp.full_like(images, baseline)
    if baseline.shape != images.shape:
        raise FaithfulnessInputError(
            f"baseline has shape {baseline.shape}, images {images.shape}: pass a constant "
            "(e.g. 0.0) or an array like the images (e.g. blurred_baseline(images)).")
    return baseline


def _check_saliency(images: Array, saliency: Array) -> None:
    if images.ndim != 4 or saliency.shape != images.shape[:3]:
        raise FaithfulnessInputError(
            f"expected images (B, H, W, C) and saliency (B, H, W) at image resolution; got images "
            f"{images.shape} and saliency {saliency.shape}. Resize CAMs first: "
            "pcam_jax.maps.postprocess(maps, H, W).")


def pixel_ranks(saliency: Array) -> Array:
    """(B, H, W) int32: each pixel's position when sorted by the map, highest first (0 = top).

    Ties go in raster order (a stable sort), so a constant map deletes row by row.
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    order = jnp.argsort(-flat, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32).reshape(saliency.shape)


def _over_steps(step_fn: Callable[[Array], Array], num_steps: int, chunk: int) -> Array:
    """``step_fn(i) -> (B,)`` for i in 0..num_steps-1 as (B, num_steps): ``chunk`` vmapped steps
    per call, ``lax.map`` over the chunks (padded with repeats of the last step, dropped)."""
    if chunk < 1:
        raise FaithfulnessInputError(f"chunk must be >= 1, got {chunk}")
    chunk = min(chunk, num_steps)
    num_chunks = -(-num_steps // chunk)
    steps = np.minimum(np.arange(num_chunks * chunk), num_steps - 1).reshape(num_chunks, chunk)
    out = jax.lax.map(jax.vmap(step_fn), jnp.asarray(steps, jnp.int32))  # (num_chunks, chunk, B)
    return jnp.moveaxis(out.reshape(num_chunks * chunk, -1)[:num_steps], 0, 1)


# ---------------------------------------------------------------------------------------------
# Deletion and insertion (RISE).


def perturbation_curve(prob_fn: ProbFn, images: Array, saliency: Array, baseline: Array | float,
                       num_steps: int = 100, insertion: bool = False, chunk: int = 8) -> Array:
    """Deletion (or insertion) curve (B, num_steps + 1): ``prob_fn`` after step i = 0..num_steps.

    Step i changes the ``floor(i * H * W / num_steps)`` top-ranked pixels: deletion puts the
    baseline there (step 0 = the image), insertion puts the image's pixels on the baseline
    (step 0 = the baseline, the last step = the image).
    """
    _check_saliency(images, saliency)
    if num_steps < 1:
        raise FaithfulnessInputError(f"num_steps must be >= 1, got {num_steps}")
    baseline = _as_baseline(baseline, images)
    ranks = pixel_ranks(saliency)[..., None]  # (B, H, W, 1)
    num_pixels = saliency.shape[1] * saliency.shape[2]
    start, end = (baseline, images) if insertion else (images, baseline)

    def step(i):
        changed = ranks < (i * num_pixels) // num_steps
        return prob_fn(jnp.where(changed, end, start))

    return _over_steps(step, num_steps + 1, chunk)


def deletion_curve(prob_fn: ProbFn, images: Array, saliency: Array, baseline: Array | float = 0.0,
                   num_steps: int = 100, chunk: int = 8) -> Array:
    """Deletion curve (B, num_steps + 1); baseline default 0 (RISE's deletion substrate)."""
    return perturbation_curve(prob_fn, images, saliency, baseline, num_steps, False, chunk)


def insertion_curve(prob_fn: ProbFn, images: Array, saliency: Array, baseline: Array | float | None = None,
                    num_steps: int = 100, chunk: int = 8) -> Array:
    """Insertion curve (B, num_steps + 1); baseline default `blurred_baseline` (RISE's)."""
    baseline = blurred_baseline(images) if baseline is None else baseline
    return perturbation_curve(prob_fn, images, saliency, baseline, num_steps, True, chunk)


def area_under_curve(curve: Array) -> Array:
    """Trapezoid rule over [0, 1] with equally spaced points: (..., S) -> (...)."""
    if curve.shape[-1] < 2:
        raise FaithfulnessInputError(f"a curve needs at least 2 points, got shape {curve.shape}")
    inner = jnp.sum(curve, axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])
    return inner / (curve.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# ROAD: remove and debias (noisy linear imputation).


def _removed(ranks: Array, count: Array, num_pixels: int, most_relevant_first: bool) -> Array:
    return ranks < count if most_relevant_first else ranks >= num_pixels - count


def road_removal_masks(saliency: Array, fractions: Sequence[float], most_relevant_first: bool = True) -> Array:
    """(P, B, H, W) bool: the ``round(f * H * W)`` most (or least) relevant pixels per fraction f."""
    ranks = pixel_ranks(saliency)
    num_pixels = saliency.shape[1] * saliency.shape[2]
    counts = np.round(np.asarray(fractions, np.float64) * num_pixels).astype(np.int32)
    return jnp.stack([_removed(ranks, int(n), num_pixels, most_relevant_first) for n in counts])


def road_curve(prob_fn: ProbFn, images: Array, saliency: Array, key: Array,
               fractions: Sequence[float] = ROAD_FRACTIONS, most_relevant_first: bool = True,
               noise: float = 0.01, num_iterations: int = 150, chunk: int = 3) -> Array:
    """ROAD (B, P): ``prob_fn`` after imputing each fraction of the pixels, MoRF or LeRF.

    The removed pixels of every fraction are filled by `noisy_linear_imputation`
    (``num_iterations`` conjugate-gradient iterations, then ``noise`` standard deviations of
    Gaussian noise); ``key`` seeds the noise (one independent draw per fraction).
    """
    _check_saliency(images, saliency)
    fractions = tuple(float(f) for f in fractions)
    if not fractions or min(fractions) < 0 or max(fractions) >= 1:
        raise FaithfulnessInputError(f"ROAD fractions must be in [0, 1); got {fractions}")
    ranks = pixel_ranks(saliency)
    num_pixels = saliency.shape[1] * saliency.shape[2]
    counts = jnp.asarray(np.round(np.asarray(fractions) * num_pixels).astype(np.int32))
    keys = jax.random.split(key, len(fractions))

    def step(i):
        removed = _removed(ranks, counts[i], num_pixels, most_relevant_first)
        filled = noisy_linear_imputation(images, removed, keys[i], noise, num_iterations)
        return prob_fn(filled)

    return _over_steps(step, len(fractions), chunk)


def road_combined(morf: Array, lerf: Array) -> Array:
    """pytorch-grad-cam's ROADCombined: ``(mean LeRF - mean MoRF) / 2`` over the fractions, (B,).

    Higher is more faithful (removing the least relevant pixels keeps the score, removing the
    most relevant ones drops it). The unperturbed score cancels out.
    """
    return 0.5 * (jnp.mean(lerf, axis=-1) - jnp.mean(morf, axis=-1))


# ---------------------------------------------------------------------------------------------
# Average drop / increase in confidence (the image multiplied by the map).


def confidence_change(prob_fn: ProbFn, images: Array, saliency: Array, eps: float = 1e-7) -> dict[str, Array]:
    """Per-image ``{"probability", "masked_probability", "drop", "increase"}``, each (B,).

    ``drop = max(0, p - p_masked) / (p + eps)``, ``increase = p_masked > p`` (float), with
    ``p_masked = prob_fn(images * saliency)``. The map must be in [0, 1] (normalise CAMs with
    `pcam_jax.maps.postprocess`). Average drop and increase in confidence are the means
    over a data set (Chattopadhyay et al. report them in percent).
    """
    _check_saliency(images, saliency)
    probability = prob_fn(images)
    masked = prob_fn(images * saliency[..., None].astype(images.dtype))
    return {"probability": probability, "masked_probability": masked,
            "drop": jax.nn.relu(probability - masked) / (probability + eps),
            "increase": (masked > probability).astype(jnp.float32)}
