"""Perturbation CAMs: Score-CAM (one masked forward per channel) and AblationCAM (one ablated head,
or forward, per channel), channels in chunks through ``jax.lax.map`` (no Python loop over K).

AblationCAM (Desai & Ramaswamy 2020): channel weight ``(y - y_k) / y``, y the target logit and
y_k the logit with channel k ablated (set to 0 when the image's smallest activation is 0,
otherwise to that minimum - 1e7). pytorch-grad-cam lowers the ablation value by a further 1e7
for each channel already processed in a batch (it reads the minimum of a tensor it has just
modified); here every channel gets the same value.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pcam_jax import geometry
from pcam_jax.maps.cams import HIGHEST, ApplyFn, Array, one_hot, resolve_targets, weighted_sum

HeadFn = Callable[[Array], Array]
ABLATION_OFFSET = 1e7  # pytorch-grad-cam's ABLATION_VALUE for features that can be negative


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
        selector = one_hot(targets, logits.shape[-1], logits.dtype)
        return jnp.einsum("bcn,bn->bc", values, selector, precision=HIGHEST)  # (B, c)

    scores = jax.lax.map(chunk_scores, chunks)  # (num_chunks, B, c)
    scores = jnp.moveaxis(scores, 0, 1).reshape(batch, num_chunks * chunk)[:, :num_channels]
    return jax.nn.softmax(scores, axis=-1) if channel_softmax else scores


def score_cam(apply_fn: ApplyFn, images: Array, targets: Array | None = None, chunk: int = 32,
              channel_softmax: bool = True) -> Array:
    """Score-CAM (Wang et al. 2020) maps (B, h, w): ``relu(sum_k w_k h_k)``, weights from
    `score_cam_weights`; targets None = predicted class on the unmasked images."""
    logits, features = apply_fn(images)
    targets = resolve_targets(targets, logits)
    weights = score_cam_weights(apply_fn, images, features, targets, chunk, channel_softmax)
    return jax.nn.relu(weighted_sum(features, weights))


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
    selector = one_hot(targets, logits.shape[-1], logits.dtype)
    original = jnp.sum(logits * selector, axis=-1)  # (B,)
    # The perturbation that sets channel k to the ablation value: (value - A_k) on channel k.
    to_value = ablation_values(features)[:, None, None, None] - features

    def ablated_score(k):
        perturbation = to_value * one_hot(k, num_channels, features.dtype)
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
    targets = resolve_targets(targets, logits)
    weights = ablation_cam_weights(apply_fn, images, features, logits, targets, chunk, head_fn)
    return jax.nn.relu(weighted_sum(features, weights))
