"""Class activation maps: CAM, positive CAM, Grad-CAM, Grad-CAM++, LayerCAM and Score-CAM.

(Part of the package `pcam_jax.maps`, which re-exports every name; the other methods are in
`pcam_jax.maps.more_cams`, all of them together in `pcam_jax.maps.harness`.)

Pure, batched functions that work under ``jax.jit`` (static shapes), ``jax.vmap`` and on
inputs sharded over a mesh. Shapes::

    features  (B, h, w, K)   the encoder's final map (20x20x128 for a 320x320 image)
    weights   (K, C)         the head's dense kernel
    targets   (B,) int       class per image; None = the predicted class
    maps      (B, h, w)      at feature resolution; `postprocess` brings them to image size

The gradient-based methods and Score-CAM take an ``apply_fn(images, feature_perturbation=None)
-> (logits, features)`` (see `pcam_jax.models.classifier_apply_fn`): the perturbation is added
to the features before the head, so the gradient with respect to it at zero is the gradient
with respect to the feature map. Each method is one forward and one VJP for the whole batch.

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
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Helpers: one-hot class selection, resizing (`pcam_jax.geometry`), normalisation.


def _one_hot(targets: Array, num_classes: int, dtype=jnp.float32) -> Array:
    return jax.nn.one_hot(targets, num_classes, dtype=dtype)


def _resolve_targets(targets: Array | None, logits: Array) -> Array:
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
    selector = _one_hot(targets, num_classes, weights.dtype)
    if logit_difference:
        if num_classes != 2:
            raise ValueError(f"logit_difference needs 2 classes; the dense weights have {num_classes}.")
        selector = 2.0 * selector - 1.0  # +1 for the target, -1 for the other class
    return jnp.einsum("kc,bc->bk", weights, selector, precision=_HIGHEST)


def _weighted_sum(features: Array, channel_weights: Array) -> Array:
    """sum_k w[b, k] * h[b, :, :, k] -> (B, h, w)."""
    return jnp.einsum("bhwk,bk->bhw", features, channel_weights.astype(features.dtype), precision=_HIGHEST)


def cam(features: Array, weights: Array, targets: Array) -> Array:
    """Class activation map ``M_c = sum_k W[k, c] h_k`` (B, h, w), no ReLU (the definition)."""
    _check_features_and_weights(features, weights)
    return _weighted_sum(features, class_weights(weights, targets))


def positive_cam(features: Array, weights: Array, targets: Array, logit_difference: bool = False) -> Array:
    """Positive CAM (the paper's "PCAM"): ``sum_k relu(W[k, c]) h_k`` (B, h, w).

    With ``logit_difference`` the weights are ``W[:, c] - W[:, other]`` (two classes) before
    the ReLU: with a 2-way softmax only the logit difference matters.
    """
    _check_features_and_weights(features, weights)
    return _weighted_sum(features, jax.nn.relu(class_weights(weights, targets, logit_difference)))


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
        chosen = jax.lax.stop_gradient(_resolve_targets(targets, logits))
        # A scalar objective: its cotangent is 1.0, whatever the logits' sharding.
        total = jnp.sum(logits * _one_hot(chosen, logits.shape[-1], logits.dtype))
        return total, (logits, features, chosen)

    _, vjp_fn, (logits, features, chosen) = jax.vjp(selected_logits, zeros, has_aux=True)
    (grads,) = vjp_fn(jnp.ones((), logits.dtype))
    return logits, features, grads, chosen


def grad_cam_from_gradients(features: Array, grads: Array) -> Array:
    """Grad-CAM: channel weights = spatial mean of the gradients; ReLU of the weighted sum."""
    return jax.nn.relu(_weighted_sum(features, jnp.mean(grads, axis=(1, 2))))


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
    return jax.nn.relu(_weighted_sum(features, weights))


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
# Score-CAM: one masked forward per channel, channels in chunks (no Python loop over K).


def score_cam_weights(apply_fn: ApplyFn, images: Array, features: Array, targets: Array,
                      chunk: int = 32, channel_softmax: bool = True) -> Array:
    """Score-CAM channel weights (B, K).

    For each channel k: upsample ``h_k`` to the image (align_corners, as torch's
    UpsamplingBilinear2d), min-max it per image (eps 1e-8), forward ``image * mask`` and
    read the target's logit. Default (pytorch-grad-cam 1.5.7): softmax of those logits over
    the channels. ``channel_softmax=False``: the target's softmax probability over the
    classes instead (the Score-CAM paper's confidence), used as is.

    Channels go in chunks of ``chunk`` through ``jax.lax.map``; each chunk is one batched
    forward of ``B * chunk`` images (memory grows with it). K is zero-padded to a multiple
    of ``chunk`` and the padded channels dropped.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    batch, height, width = images.shape[:3]
    num_channels = features.shape[-1]
    chunk = min(chunk, num_channels)
    num_chunks = -(-num_channels // chunk)
    padded = jnp.pad(features, [(0, 0)] * 3 + [(0, num_chunks * chunk - num_channels)])
    # (num_chunks, B, h, w, chunk): lax.map runs one chunk of channels at a time.
    chunks = jnp.moveaxis(padded.reshape(*padded.shape[:3], num_chunks, chunk), 3, 0)

    def chunk_scores(feature_chunk):
        masks = geometry.resize_spatial(feature_chunk, height, width, align_corners=True)  # (B, H, W, c)
        lo = jnp.min(masks, axis=(1, 2), keepdims=True)
        hi = jnp.max(masks, axis=(1, 2), keepdims=True)
        masks = (masks - lo) / (hi - lo + 1e-8)
        masked = images[:, None] * jnp.moveaxis(masks, 3, 1)[..., None]  # (B, c, H, W, Cin)
        logits, _ = apply_fn(masked.reshape(batch * chunk, *images.shape[1:]))
        logits = logits.reshape(batch, chunk, -1)
        values = logits if channel_softmax else jax.nn.softmax(logits, axis=-1)
        selector = _one_hot(targets, logits.shape[-1], logits.dtype)
        return jnp.einsum("bcn,bn->bc", values, selector, precision=_HIGHEST)  # (B, c)

    scores = jax.lax.map(chunk_scores, chunks)  # (num_chunks, B, c)
    scores = jnp.moveaxis(scores, 0, 1).reshape(batch, num_chunks * chunk)[:, :num_channels]
    return jax.nn.softmax(scores, axis=-1) if channel_softmax else scores


def score_cam(apply_fn: ApplyFn, images: Array, targets: Array | None = None, chunk: int = 32,
              channel_softmax: bool = True) -> Array:
    """Score-CAM (Wang et al. 2020) maps (B, h, w): ``relu(sum_k w_k h_k)``, weights from
    `score_cam_weights`; targets None = predicted class on the unmasked images."""
    logits, features = apply_fn(images)
    targets = _resolve_targets(targets, logits)
    weights = score_cam_weights(apply_fn, images, features, targets, chunk, channel_softmax)
    return jax.nn.relu(_weighted_sum(features, weights))
