"""Per-pixel attributions: gradients, Integrated Gradients and SmoothGrad, batched and jit-able.

Baselines for the CAMs of `pcam_jax.maps`: these attribute to every input pixel rather than
to the feature map. Shapes::

    images    (B, H, W, C)
    score_fn  (N, H, W, C) -> (N,)    the score explained, e.g. the target logit (`target_logit`)
    result    (B, H, W, C)            same shape as the images; `saliency_map` makes it (B, H, W)

``score_fn`` is called on batches shaped like ``images`` (the steps or noise samples are a
vmapped axis, ``chunk`` of them per call, ``jax.lax.scan`` over the chunks accumulating the
sum), so it may close over per-image targets. Images are independent in eval mode, so the
gradient of ``sum_b score_b`` is each image's own gradient.

- Integrated Gradients (Sundararajan et al. 2017): ``(x - x') * mean_k grad f(x' + a_k (x - x'))``
  on the straight path from the baseline x'; ``a_k = k / m`` for k = 1..m (the paper's right
  Riemann sum), or the trapezoid rule over k = 0..m. Completeness: the attributions sum to
  about ``f(x) - f(x')``.
- SmoothGrad (Smilkov et al. 2017): ``mean_n grad f(x + e_n)``, ``e_n ~ N(0, sigma^2)`` with
  ``sigma = noise_level * (max(x) - min(x))`` per image; ``squared=True`` averages the squared
  gradients (SmoothGrad-SQ).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array], Array]
RULES = ("riemann_right", "trapezoid")


def target_logit(logits_fn: Callable[[Array], Array], targets: Array) -> ScoreFn:
    """``score_fn(images) -> (B,)``: the logit of ``targets`` (B,), by one-hot contraction."""
    def score_fn(images):
        logits = logits_fn(images)
        return jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype), axis=-1)

    return score_fn


def input_gradients(score_fn: ScoreFn, images: Array) -> Array:
    """``d score_b / d images_b`` (B, H, W, C) from one VJP ("vanilla" gradient saliency)."""
    return jax.grad(lambda x: jnp.sum(score_fn(x)))(images)


def _weighted_gradient_sum(score_fn: ScoreFn, make_input: Callable[[Array], Array], weights: np.ndarray,
                           chunk: int, transform: Callable[[Array], Array] = lambda g: g) -> Array:
    """``sum_i weights[i] * transform(grad at make_input(i))`` over i, ``chunk`` inputs per call."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    num = len(weights)
    chunk = min(chunk, num)
    num_chunks = -(-num // chunk)
    padded = np.zeros(num_chunks * chunk, np.float32)
    padded[:num] = weights  # padded steps weigh 0
    index = np.minimum(np.arange(num_chunks * chunk), num - 1).reshape(num_chunks, chunk)

    def one(i, w):
        return w * transform(input_gradients(score_fn, make_input(i)))

    def body(total, xs):
        i, w = xs
        return total + jnp.sum(jax.vmap(one)(i, w), axis=0), None

    first = jax.eval_shape(lambda: make_input(jnp.int32(0)))
    init = jnp.zeros(first.shape, first.dtype, out_sharding=first.sharding)
    total, _ = jax.lax.scan(body, init, (jnp.asarray(index, jnp.int32), jnp.asarray(padded.reshape(index.shape))))
    return total


def integrated_gradients(score_fn: ScoreFn, images: Array, baseline: Array | float = 0.0, num_steps: int = 32,
                         chunk: int = 8, rule: str = "riemann_right") -> Array:
    """Integrated Gradients (B, H, W, C) along the straight path from ``baseline`` (a constant or
    an array like the images), ``num_steps`` gradient evaluations (+1 with ``trapezoid``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    baseline = jnp.broadcast_to(jnp.asarray(baseline, images.dtype), images.shape)
    if rule == "riemann_right":
        alphas = np.arange(1, num_steps + 1) / num_steps
        weights = np.full(num_steps, 1.0 / num_steps)
    else:
        alphas = np.arange(num_steps + 1) / num_steps
        weights = np.full(num_steps + 1, 1.0 / num_steps)
        weights[[0, -1]] *= 0.5
    alphas_j = jnp.asarray(alphas, images.dtype)
    delta = images - baseline
    mean_grad = _weighted_gradient_sum(score_fn, lambda i: baseline + alphas_j[i] * delta, weights, chunk)
    return delta * mean_grad


def smooth_grad(score_fn: ScoreFn, images: Array, key: Array, num_samples: int = 32, noise_level: float = 0.15,
                chunk: int = 8, squared: bool = False) -> Array:
    """SmoothGrad (B, H, W, C): gradients averaged over ``num_samples`` noisy copies.

    Sample n's noise is ``jax.random.normal(jax.random.fold_in(key, n), images.shape)`` times
    sigma (module docstring), so results do not depend on ``chunk``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    axes = tuple(range(1, images.ndim))
    sigma = noise_level * (jnp.max(images, axis=axes, keepdims=True) - jnp.min(images, axis=axes, keepdims=True))

    def noisy(n):
        return images + sigma * jax.random.normal(jax.random.fold_in(key, n), images.shape, images.dtype)

    transform = (lambda g: g * g) if squared else (lambda g: g)
    return _weighted_gradient_sum(score_fn, noisy, np.full(num_samples, 1.0 / num_samples), chunk, transform)


def saliency_map(attributions: Array, absolute: bool = True) -> Array:
    """(B, H, W, C) attributions -> (B, H, W): sum over channels of ``|a|`` (or of ``a``)."""
    return jnp.sum(jnp.abs(attributions) if absolute else attributions, axis=-1)
