"""Resize and letterbox geometry: how an image of any size becomes the model's square input, and
how a map at the model's size goes back onto the image. The one definition of both.

``config.data.resize`` (`RESIZE_MODES`):

- ``stretch``: bilinear resize to ``size x size`` (the MURA baseline);
- ``pad``: scale so the longer side is ``size``, keep the aspect ratio, and letterbox with
  zeros, centred, the extra row or column of padding at the bottom / right (`content_box`).

Bilinear here is always half-pixel centres clamped at the borders, no antialiasing
(``tf.image.resize(..., "bilinear")``, OpenCV's INTER_LINEAR, pytorch-grad-cam's final resize).
Its taps along one axis are `interpolation_taps`; the kernels that apply them differ only by
where they run:

=============================  ==============================================================
`tf_resize`                    the tf.data pipeline (images and masks, `pcam_jax.data.pipeline`)
`resize_host`                  numpy on the host: files of any size (`pcam_jax.run`)
`resize_spatial`               inside a jitted program: maps to the image (`pcam_jax.maps.postprocess`),
                               Score-CAM's masks (``align_corners=True``, as torch's UpsamplingBilinear2d)
`upsample_decoder`             the decoder's upsampling (``jax.image.resize``: the train step's own op)
`sample_bilinear`              a rotation's inverse warp (`pcam_jax.data.device_augment`), zeros outside
=============================  ==============================================================

`tests/test_geometry.py` checks that they agree with each other and with a slow loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

RESIZE_MODES = ("stretch", "pad")
_HIGHEST = jax.lax.Precision.HIGHEST


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"config.data.resize must be one of {RESIZE_MODES}, got {mode!r}.")
    return mode


def content_box(height: int, width: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an image of ``height x width`` inside the model's ``size x size`` input.

    In float32, as the pipeline has always computed it: ``round(side * (size / longer side))``
    (round half to even), clipped to [1, size]."""
    if check_resize_mode(mode) == "stretch":
        return 0, 0, size, size
    scale = np.float32(size) / np.float32(max(height, width))
    new_h, new_w = (int(np.clip(np.round(np.float32(side) * scale), 1, size)) for side in (height, width))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


@functools.lru_cache(maxsize=256)
def interpolation_taps(n_in: int, n_out: int, align_corners: bool = False):
    """``(lo, hi, w_lo, w_hi)``, each (n_out,): output sample i is ``w_lo x[lo] + w_hi x[hi]``.

    ``align_corners=False``: half-pixel centres clamped at the edges; ``True``: corner pixels
    aligned (``torch.nn.UpsamplingBilinear2d``)."""
    if align_corners:
        x = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    else:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    return lo, hi, (1.0 - frac), np.where(hi != lo, frac, 0.0)


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
    """(n_out, n_in) float32 matrix of `interpolation_taps` (built at trace time)."""
    lo, hi, w_lo, w_hi = interpolation_taps(n_in, n_out, align_corners)
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), w_lo)
    np.add.at(m, (np.arange(n_out), hi), w_hi)
    return m.astype(np.float32)


def resize_spatial(x: jax.Array, height: int, width: int, align_corners: bool = False) -> jax.Array:
    """Bilinear resize of axes 1 and 2 of a (B, h, w, ...) array to (B, height, width, ...), in jit."""
    rows = jnp.asarray(interpolation_matrix(x.shape[1], height, align_corners), x.dtype)
    cols = jnp.asarray(interpolation_matrix(x.shape[2], width, align_corners), x.dtype)
    # Two small matmuls (separable interpolation): cheap, exact, and shard-friendly on B.
    return jnp.einsum("Hh,bhw...,Ww->bHW...", rows, x, cols, precision=_HIGHEST)


def _resize_axis0(x: np.ndarray, n_out: int) -> np.ndarray:
    lo, hi, w_lo, w_hi = interpolation_taps(x.shape[0], n_out)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return x[lo] * w_lo.astype(np.float32).reshape(shape) + x[hi] * w_hi.astype(np.float32).reshape(shape)


def resize_host(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (H, W) -> (height, width) on the host, two gathered taps per axis (a dense matrix
    product with a 2500x2048 radiograph costs ~1.6 GFLOP, this ~2 MFLOP)."""
    x = np.asarray(image, np.float32)
    return np.ascontiguousarray(_resize_axis0(_resize_axis0(x, height).T, width).T, dtype=np.float32)


def to_model_size(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """float32 (H, W) in [0, 1] -> (size, size), as the training pipeline brings an image in."""
    top, left, h, w = content_box(*image.shape, size, mode)
    out = np.zeros((size, size), np.float32)
    out[top:top + h, left:left + w] = resize_host(image, h, w)
    return np.clip(out, 0.0, 1.0)


def crop_to_content(maps_at_model_size, height: int, width: int, mode: str):
    """(..., S, S) maps at the model's input size -> the part over an image of ``height x width``
    (all of it for ``stretch``; the letterbox's content for ``pad``). numpy or JAX arrays."""
    size = maps_at_model_size.shape[-1]
    top, left, h, w = content_box(height, width, size, mode)
    return maps_at_model_size[..., top:top + h, left:left + w]


def tf_resize(image, size: int, mode: str):
    """float32 (H, W, C) tensor -> (size, size, C), in the tf.data pipeline (`content_box`'s geometry)."""
    import tensorflow as tf

    if check_resize_mode(mode) == "stretch":
        return tf.image.resize(image, (size, size), method="bilinear")
    shape = tf.shape(image)
    box = tf.numpy_function(lambda h, w: np.asarray(content_box(int(h), int(w), size, mode), np.int32),
                            [shape[0], shape[1]], tf.int32, stateful=False)
    box.set_shape((4,))
    top, left, h, w = box[0], box[1], box[2], box[3]
    resized = tf.image.resize(image, tf.stack([h, w]), method="bilinear")
    return tf.pad(resized, [[top, size - h - top], [left, size - w - left], [0, 0]])


def upsample_decoder(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of a (B, h, w, C) batch to (B, height, width, C) with ``jax.image.resize``
    (equal to `resize_spatial` when upsampling; kept as the train step's op)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="bilinear")


def sample_bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image (H, W, C) sampled at float coordinates (H', W'); outside the image counts as 0."""
    height, width, _ = image.shape
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def tap(yy, xx):
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        value = image[jnp.clip(yy, 0, height - 1), jnp.clip(xx, 0, width - 1)]
        return jnp.where(inside[..., None], value, 0.0)

    top = (1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1)
    bottom = (1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)
    return (1 - wy) * top + wy * bottom
