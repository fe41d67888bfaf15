"""The feature-map CAMs and the helpers every map shares: CAM, positive CAM (the paper's "PCAM"),
stage 2's attention map, EigenCAM; one-hot class selection, per-image min-max, post-processing.

(Part of the package `pcam_jax.maps`, which re-exports every name; the gradient CAMs are in
`pcam_jax.maps.gradient_cams`, Score-CAM and AblationCAM in `pcam_jax.maps.perturbation_cams`,
the list of all methods in `pcam_jax.maps.registry`.)

Pure, batched functions that work under ``jax.jit`` (static shapes), ``jax.vmap`` and on
inputs sharded over a mesh. Shapes::

    features  (B, h, w, K)   the encoder's final map (20x20x128 for a 320x320 image)
    weights   (K, C)         the head's dense kernel
    targets   (B,) int       class per image; None = the predicted class
    maps      (B, h, w)      at feature resolution; `postprocess` brings them to image size

EigenCAM (Muhammad & Yeasin 2020) is the features' first principal component, the (h*w, K)
matrix centred over positions projected on its first right singular vector. pytorch-grad-cam
leaves the sign to LAPACK (it differs between builds, its issue #315); here the component is
oriented so that its channel loadings sum to >= 0, i.e. the map correlates positively with the
summed activations. EigenCAM uses no class and no gradient.

Conventions follow pytorch-grad-cam 1.5.7 so results are comparable with it: the same channel
weights per method, ReLU on the weighted sum, then per-image min-max and bilinear resize
(`postprocess`). CAM and positive CAM are returned without the ReLU (their definition).
Class selection is always a one-hot contraction, never a gather with the targets: a gather
with sharded indices fails on explicit meshes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pcam_jax import geometry

Array = jax.Array
ApplyFn = Callable[..., tuple[Array, Array]]

ABNORMAL = 1  # the class whose map shows the lesion
HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Helpers: one-hot class selection, resizing (`pcam_jax.geometry`), normalisation.


def one_hot(targets: Array, num_classes: int, dtype=jnp.float32) -> Array:
    return jax.nn.one_hot(targets, num_classes, dtype=dtype)


def resolve_targets(targets: Array | None, logits: Array) -> Array:
    """The given targets, or the predicted class (arg-max of the logits) where None."""
    if targets is None:
        return jnp.argmax(logits, axis=-1)
    return jnp.asarray(targets)


def upsample(maps: Array, height: int, width: int, align_corners: bool = False) -> Array:
    """Bilinear resize of maps (B, h, w) to (B, height, width).

    Half-pixel centres clamped at the borders (OpenCV ``cv2.resize`` INTER_LINEAR, as
    pytorch-grad-cam's final resize; equal to ``jax.image.resize(..., "bilinear")`` when
    upsampling, without its antialiasing when downsampling). ``align_corners=True`` matches
    ``torch.nn.UpsamplingBilinear2d``.
    """
    return geometry.resize_spatial(maps, height, width, align_corners)


def normalize(maps: Array, eps: float = 1e-7) -> Array:
    """Per-image min-max to [0, 1]: ``(m - min) / (max - min + eps)`` over all non-batch axes.

    Same as pytorch-grad-cam's ``scale_cam_image`` (eps 1e-7). A constant map gives zeros,
    never NaN (also with eps = 0).
    """
    axes = tuple(range(1, maps.ndim))
    shifted = maps - jnp.min(maps, axis=axes, keepdims=True)
    span = jnp.max(shifted, axis=axes, keepdims=True)
    safe = jnp.where(span > 0, span + eps, 1.0)
    return jnp.where(span > 0, shifted / safe, jnp.zeros_like(shifted))


def postprocess(maps: Array, height: int, width: int, eps: float = 1e-7) -> Array:
    """Maps (B, h, w) -> (B, height, width) in [0, 1], in pytorch-grad-cam's order.

    ReLU, per-image min-max, bilinear resize to the image (OpenCV convention), then min-max
    once more (pytorch-grad-cam rescales the resized map when it aggregates layers), so the
    result equals what pytorch-grad-cam returns for the same raw map.
    """
    maps = normalize(jax.nn.relu(maps), eps)
    return normalize(upsample(maps, height, width), eps)


# ---------------------------------------------------------------------------------------------
# CAM and positive CAM: one contraction of the features with the class's dense weights.


def _check_features_and_weights(features: Array, weights: Array) -> None:
    if features.ndim != 4 or weights.ndim != 2 or features.shape[-1] != weights.shape[0]:
        raise ValueError(
            f"expected features (B, h, w, K) and dense weights (K, C) with the same K; got "
            f"features {features.shape} and weights {weights.shape}. Pass the head's kernel, "
            "pcam_jax.models.head_kernel(params), and the encoder's final feature map.")


def class_weights(weights: Array, targets: Array, logit_difference: bool = False) -> Array:
    """Per-image channel weights (B, K): ``W[:, c_b]``, or ``W[:, c_b] - W[:, other]``.

    A one-hot contraction (no gather), so sharded targets work on explicit meshes.
    """
    num_classes = weights.shape[1]
    selector = one_hot(targets, num_classes, weights.dtype)
    if logit_difference:
        if num_classes != 2:
            raise ValueError(f"logit_difference needs 2 classes; the dense weights have {num_classes}.")
        selector = 2.0 * selector - 1.0  # +1 for the target, -1 for the other class
    return jnp.einsum("kc,bc->bk", weights, selector, precision=HIGHEST)


def weighted_sum(features: Array, channel_weights: Array) -> Array:
    """sum_k w[b, k] * h[b, :, :, k] -> (B, h, w)."""
    return jnp.einsum("bhwk,bk->bhw", features, channel_weights.astype(features.dtype), precision=HIGHEST)


def cam(features: Array, weights: Array, targets: Array) -> Array:
    """Class activation map ``M_c = sum_k W[k, c] h_k`` (B, h, w), no ReLU (the definition)."""
    _check_features_and_weights(features, weights)
    return weighted_sum(features, class_weights(weights, targets))


def positive_cam(features: Array, weights: Array, targets: Array, logit_difference: bool = False) -> Array:
    """Positive CAM (the paper's "PCAM"): ``sum_k relu(W[k, c]) h_k`` (B, h, w).

    With ``logit_difference`` the weights are ``W[:, c] - W[:, other]`` (two classes) before
    the ReLU: with a 2-way softmax only the logit difference matters.
    """
    _check_features_and_weights(features, weights)
    return weighted_sum(features, jax.nn.relu(class_weights(weights, targets, logit_difference)))


def attention_map(features: Array, weights: Array, image_hw: tuple[int, int],
                  logit_difference: bool = False, targets: Array | None = None) -> Array:
    """Stage 2's attention ``A``: the abnormal class's positive CAM at image size, in [0, 1].

    ``P = sum_k relu(W[k, abnormal]) * h_k`` (or with ``W[:, 1] - W[:, 0]`` when
    ``logit_difference``), upsampled bilinearly to ``image_hw`` and min-max normalised per
    image with an epsilon (a flat map gives zeros, not NaN). Differentiable in the features
    and the kernel: this is the path by which stage 2's loss trains the encoder. The same
    map is shown in TensorBoard and scored as ``stage2/positive_cam``.

    Args:
      features: (B, h, w, K) encoder output.
      weights: (K, C) dense kernel of the head (`pcam_jax.models.head_kernel`).
      image_hw: (H, W) of the images.
      targets: (B,) class per image whose map to take; None: the abnormal class for all.
    Returns:
      (B, H, W) float32.
    """
    if targets is None:
        targets = jnp.full((features.shape[0],), ABNORMAL, jnp.int32)
    cam_ = positive_cam(features, weights, targets, logit_difference=logit_difference)
    return normalize(upsample(cam_, int(image_hw[0]), int(image_hw[1])))


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
    projection = jnp.einsum("bpk,bk->bp", x, v, precision=HIGHEST)
    return projection.reshape(batch, height, width)


def eigen_cam_from_features(features: Array) -> Array:
    """EigenCAM: ``relu`` of `first_principal_component` (B, h, w)."""
    return jax.nn.relu(first_principal_component(features))


def eigen_cam(apply_fn: ApplyFn, images: Array, targets: Array | None = None) -> Array:
    """EigenCAM maps (B, h, w); ``targets`` is ignored (the method has no class)."""
    del targets
    _, features = apply_fn(images)
    return eigen_cam_from_features(features)
