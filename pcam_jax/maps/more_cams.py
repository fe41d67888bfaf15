"""HiResCAM, XGradCAM, AblationCAM and EigenCAM, in the conventions of `pcam_jax.maps.cams`.

Shapes and conventions as there (features (B, h, w, K), maps (B, h, w) at feature
resolution, ReLU on the result as pytorch-grad-cam 1.5.7 applies it to every method,
class selection by one-hot contraction). The definitions follow pytorch-grad-cam:

- HiResCAM (Draelos & Carin 2020): ``relu(sum_k g_k * A_k)``, the element-wise product of
  gradients and activations summed over channels (Grad-CAM without the spatial averaging).
- XGradCAM (Fu et al. 2020): channel weights ``sum_hw(g_k * A_k) / (sum_hw(A_k) + 1e-7)``.
- AblationCAM (Desai & Ramaswamy 2020): channel weight ``(y - y_k) / y``, y the target logit
  and y_k the logit with channel k ablated (set to 0 when the image's smallest activation is
  0, otherwise to that minimum - 1e7). pytorch-grad-cam lowers the ablation value by a
  further 1e7 for each channel already processed in a batch (it reads the minimum of a
  tensor it has just modified); here every channel gets the same value.
- EigenCAM (Muhammad & Yeasin 2020): the features' first principal component, the
  (h*w, K) matrix centred over positions projected on its first right singular vector.
  pytorch-grad-cam leaves the sign to LAPACK (it differs between builds, its issue #315);
  here the component is oriented so that its channel loadings sum to >= 0, i.e. the map
  correlates positively with the summed activations (a ReLU network's "where the features
  fire"). EigenCAM uses no class and no gradient.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pcam_jax.maps.cams import _HIGHEST, ApplyFn, Array, _one_hot, _resolve_targets, _weighted_sum, gradient_method

HeadFn = Callable[[Array], Array]
ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE for features that can be negative


# ---------------------------------------------------------------------------------------------
# HiResCAM and XGradCAM: other weightings of the same forward + VJP.


def hires_cam_from_gradients(features: Array, grads: Array) -> Array:
    """HiResCAM: ``relu(sum_k g_k * A_k)`` (B, h, w)."""
    return jax.nn.relu(jnp.sum(grads * features, axis=-1))


def xgrad_cam_from_gradients(features: Array, grads: Array, eps: float = 1e-7) -> Array:
    """XGradCAM: weights ``sum_hw(g * A) / (sum_hw(A) + eps)``; ReLU of the weighted sum."""
    weights = jnp.sum(grads * features, axis=(1, 2)) / (jnp.sum(features, axis=(1, 2)) + eps)
    return jax.nn.relu(_weighted_sum(features, weights))


hires_cam = gradient_method(hires_cam_from_gradients, "HiResCAM (Draelos & Carin 2020).")
xgrad_cam = gradient_method(xgrad_cam_from_gradients, "XGradCAM (Fu et al. 2020).")


# ---------------------------------------------------------------------------------------------
# AblationCAM: one ablated head (or forward) per channel, channels in chunks.


def ablation_values(features: Array) -> Array:
    """(B,) value an ablated channel takes: 0 if the image's minimum activation is 0 (after a
    ReLU), else that minimum - 1e7 (pytorch-grad-cam's rule for signed features)."""
    low = jnp.min(features, axis=(1, 2, 3))
    return jnp.where(low == 0, 0.0, low - ABLATION_OFFSET).astype(features.dtype)


def ablation_cam_weights(apply_fn: ApplyFn, images: Array, features: Array, logits: Array, targets: Array,
                         chunk: int = 32, head_fn: HeadFn | None = None) -> Array:
    """AblationCAM channel weights (B, K): ``(y - y_k) / y`` for the target logit y.

    With ``head_fn`` (features -> logits, e.g. the GAP + dense head) only the head runs on the
    ablated features: cheap. Without it each ablation is a full ``apply_fn(images,
    perturbation)`` forward, valid for any apply_fn with the perturbation contract (as
    expensive as Score-CAM). Channels go ``chunk`` at a time (vmapped), ``jax.lax.map`` over
    the chunks; K is padded to a multiple of ``chunk`` and the padding dropped.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    num_channels = features.shape[-1]
    chunk = min(chunk, num_channels)
    num_chunks = -(-num_channels // chunk)
    channels = jnp.minimum(jnp.arange(num_chunks * chunk), num_channels - 1).reshape(num_chunks, chunk)
    selector = _one_hot(targets, logits.shape[-1], logits.dtype)
    original = jnp.sum(logits * selector, axis=-1)  # (B,)
    # The perturbation that sets channel k to the ablation value: (value - A_k) on channel k.
    to_value = ablation_values(features)[:, None, None, None] - features

    def ablated_score(k):
        perturbation = to_value * _one_hot(k, num_channels, features.dtype)
        if head_fn is not None:
            ablated = head_fn(features + perturbation)
        else:
            ablated, _ = apply_fn(images, perturbation)
        return jnp.sum(ablated * selector, axis=-1)  # (B,)

    scores = jax.lax.map(jax.vmap(ablated_score), channels)  # (num_chunks, chunk, B)
    scores = jnp.moveaxis(scores.reshape(num_chunks * chunk, -1)[:num_channels], 0, 1)
    return (original[:, None] - scores) / original[:, None]


def ablation_cam(apply_fn: ApplyFn, images: Array, targets: Array | None = None, chunk: int = 32,
                 head_fn: HeadFn | None = None) -> Array:
    """AblationCAM maps (B, h, w): ``relu(sum_k w_k A_k)``, weights from `ablation_cam_weights`."""
    logits, features = apply_fn(images)
    targets = _resolve_targets(targets, logits)
    weights = ablation_cam_weights(apply_fn, images, features, logits, targets, chunk, head_fn)
    return jax.nn.relu(_weighted_sum(features, weights))


# ---------------------------------------------------------------------------------------------
# EigenCAM: the first principal component of the features (no class, no gradient).


def first_principal_component(features: Array) -> Array:
    """(B, h, w) projection of the position-centred features on their first right singular
    vector, oriented so the vector's entries sum to >= 0 (module docstring)."""
    batch, height, width, num_channels = features.shape
    x = features.reshape(batch, height * width, num_channels).astype(jnp.float32)
    x = x - jnp.mean(x, axis=1, keepdims=True)
    _, _, vt = jnp.linalg.svd(x, full_matrices=False)
    v = vt[:, 0, :]  # (B, K)
    v = jnp.where(jnp.sum(v, axis=-1, keepdims=True) < 0, -v, v)
    projection = jnp.einsum("bpk,bk->bp", x, v, precision=_HIGHEST)
    return projection.reshape(batch, height, width)


def eigen_cam_from_features(features: Array) -> Array:
    """EigenCAM: ``relu`` of `first_principal_component` (B, h, w)."""
    return jax.nn.relu(first_principal_component(features))


def eigen_cam(apply_fn: ApplyFn, images: Array, targets: Array | None = None) -> Array:
    """EigenCAM maps (B, h, w); ``targets`` is ignored (the method has no class)."""
    del targets
    _, features = apply_fn(images)
    return eigen_cam_from_features(features)
