"""Gradient CAMs: Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM and XGradCAM, from one forward and one
VJP for the whole batch (`forward_and_gradients`); each differs only in how it weighs the
gradients (one small function per method, as pytorch-grad-cam's classes).

The methods take an ``apply_fn(images, feature_perturbation=None) -> (logits, features)`` (see
`pcam_jax.models.classifier_apply_fn`): the perturbation is added to the features before the
head, so the gradient with respect to it at zero is the gradient with respect to the feature
map. Definitions follow pytorch-grad-cam 1.5.7:

- HiResCAM (Draelos & Carin 2020): ``relu(sum_k g_k * A_k)``, the element-wise product of
  gradients and activations summed over channels (Grad-CAM without the spatial averaging).
- XGradCAM (Fu et al. 2020): channel weights ``sum_hw(g_k * A_k) / (sum_hw(A_k) + 1e-7)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pcam_jax.maps.cams import ApplyFn, Array, one_hot, resolve_targets, weighted_sum


# ---------------------------------------------------------------------------------------------
# Gradient-based maps: one forward + one VJP for the batch, then one weighting per method.


def forward_and_gradients(apply_fn: ApplyFn, images: Array, targets: Array | None = None):
    """``(logits, features, grads, targets)`` from one forward and one VJP.

    ``grads`` (B, h, w, K) is the gradient of ``sum_b logit[b, target_b]`` (a one-hot
    contraction) with respect to the feature map; images are independent in eval mode, so
    each image's slice is the gradient of its own target logit.
    """
    feature_struct = jax.eval_shape(lambda x: apply_fn(x)[1], images)
    # On an explicit mesh the struct carries the features' sharding (None otherwise), so the
    # perturbation, and with it the gradient, is sharded like the features.
    zeros = jnp.zeros(feature_struct.shape, feature_struct.dtype, out_sharding=feature_struct.sharding)

    def selected_logits(perturbation):
        logits, features = apply_fn(images, perturbation)
        chosen = jax.lax.stop_gradient(resolve_targets(targets, logits))
        # A scalar objective: its cotangent is 1.0, whatever the logits' sharding.
        total = jnp.sum(logits * one_hot(chosen, logits.shape[-1], logits.dtype))
        return total, (logits, features, chosen)

    _, vjp_fn, (logits, features, chosen) = jax.vjp(selected_logits, zeros, has_aux=True)
    (grads,) = vjp_fn(jnp.ones((), logits.dtype))
    return logits, features, grads, chosen


def grad_cam_from_gradients(features: Array, grads: Array) -> Array:
    """Grad-CAM: channel weights = spatial mean of the gradients; ReLU of the weighted sum."""
    return jax.nn.relu(weighted_sum(features, jnp.mean(grads, axis=(1, 2))))


def grad_cam_pp_from_gradients(features: Array, grads: Array, eps: float = 1e-6) -> Array:
    """Grad-CAM++ (pytorch-grad-cam's eq. 19 form).

    ``alpha = g^2 / (2 g^2 + sum_hw(A) g^3 + eps)``, zero where ``g == 0``;
    weights = ``sum_hw(relu(g) * alpha)``; ReLU of the weighted sum.
    """
    g2 = grads * grads
    g3 = g2 * grads
    sum_activations = jnp.sum(features, axis=(1, 2), keepdims=True)
    alpha = g2 / (2.0 * g2 + sum_activations * g3 + eps)
    alpha = jnp.where(grads != 0, alpha, 0.0)
    weights = jnp.sum(jax.nn.relu(grads) * alpha, axis=(1, 2))
    return jax.nn.relu(weighted_sum(features, weights))


def layer_cam_from_gradients(features: Array, grads: Array) -> Array:
    """LayerCAM: ``relu(sum_k relu(g_k) * A_k)``, a per-location weighting."""
    return jax.nn.relu(jnp.sum(jax.nn.relu(grads) * features, axis=-1))


def gradient_method(weighting: Callable[[Array, Array], Array], doc: str) -> Callable:
    """``method(apply_fn, images, targets=None) -> maps (B, h, w)``: one forward + one VJP, then
    ``weighting(features, grads)`` (each gradient-based CAM differs only in that weighting)."""

    def method(apply_fn: ApplyFn, images: Array, targets: Array | None = None) -> Array:
        _, features, grads, _ = forward_and_gradients(apply_fn, images, targets)
        return weighting(features, grads)

    method.__doc__ = doc + " Maps (B, h, w); targets None = predicted class."
    method.__name__ = method.__qualname__ = weighting.__name__.replace("_from_gradients", "")
    return method


grad_cam = gradient_method(grad_cam_from_gradients, "Grad-CAM (Selvaraju et al. 2017).")
grad_cam_pp = gradient_method(grad_cam_pp_from_gradients, "Grad-CAM++ (Chattopadhyay et al. 2018).")
layer_cam = gradient_method(layer_cam_from_gradients, "LayerCAM (Jiang et al. 2021).")


# ---------------------------------------------------------------------------------------------
# HiResCAM and XGradCAM: other weightings of the same forward + VJP.


def hires_cam_from_gradients(features: Array, grads: Array) -> Array:
    """HiResCAM: ``relu(sum_k g_k * A_k)`` (B, h, w)."""
    return jax.nn.relu(jnp.sum(grads * features, axis=-1))


def xgrad_cam_from_gradients(features: Array, grads: Array, eps: float = 1e-7) -> Array:
    """XGradCAM: weights ``sum_hw(g * A) / (sum_hw(A) + eps)``; ReLU of the weighted sum."""
    weights = jnp.sum(grads * features, axis=(1, 2)) / (jnp.sum(features, axis=(1, 2)) + eps)
    return jax.nn.relu(weighted_sum(features, weights))


hires_cam = gradient_method(hires_cam_from_gradients, "HiResCAM (Draelos & Carin 2020).")
xgrad_cam = gradient_method(xgrad_cam_from_gradients, "XGradCAM (Fu et al. 2020).")
