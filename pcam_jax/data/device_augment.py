"""Training augmentation on the accelerator, inside the jitted train step (``data.augment_on="device"``).

The host then only copies uint8 pixels at training resolution (`pcam_jax.data.uint8_cache`);
the flip, the rotation (bilinear, zero fill), the scaling to [0, 1] and the mask threshold
run here. The geometry is the host path's (`pcam_jax.data.pipeline.flip_rotate`: flip
horizontally, then rotate about the centre, positive angles counter-clockwise as displayed),
and the image and its mask go through the same transform.

Randomness is stateless: the draw of the example at global position ``p`` of a stream is
``fold_in(fold_in(key(seed), stream), p)``. A train step ``s`` (0-based, the state's step
counter) with global batch ``B`` holds positions ``s * B ... s * B + B - 1``, exactly the
loop's data position, so a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from pcam_jax import geometry

AUGMENT_ON = ("host", "device")
TRAIN_STREAM, LABELLED_STREAM = 1, 2


def check_augment_on(value: str) -> None:
    if value not in AUGMENT_ON:
        raise ValueError(f"config.data.augment_on must be one of {AUGMENT_ON}, got {value!r}")


def draw_flip_rotate(key: jax.Array, positions: jax.Array, degrees: float, flip: bool):
    """``(angles, flips)`` for examples at ``positions`` (B,) int: radians in [-d, d], bool (B,)."""
    def one(position):
        u_angle, u_flip = jax.random.uniform(jax.random.fold_in(key, position), (2,))
        return (2.0 * u_angle - 1.0) * math.radians(degrees), (u_flip < 0.5) & flip

    return jax.vmap(one)(positions)


def flip_rotate(images: jax.Array, angles: jax.Array, flips: jax.Array) -> jax.Array:
    """Flip then rotate float images (B, H, W, C), bilinear with zero fill; one transform per image.

    Output pixel (x, y) (column, row, centres on integers) samples the input at
    ``x_in = s (cos a (x - cx) - sin a (y - cy)) + cx``, ``y_in = sin a (x - cx) + cos a (y - cy) + cy``
    with ``s = -1`` for a flip, the inverse map `pipeline.flip_rotate_transforms` gives TF.
    """
    _, height, width, _ = images.shape
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) - cy,
                          jnp.arange(width, dtype=jnp.float32) - cx, indexing="ij")

    def one(image, angle, flipped):
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        sign = jnp.where(flipped, -1.0, 1.0)
        x_in = sign * (cos * xs - sin * ys) + cx
        y_in = sin * xs + cos * ys + cy
        return geometry.sample_bilinear(image, y_in, x_in)

    return jax.vmap(one)(images, angles, flips)


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]; float images pass unchanged (as float32)."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def augment_batch(batch: dict, key: jax.Array, first_position: jax.Array, *, degrees: float, flip: bool) -> dict:
    """The batch with its images in [0, 1], flipped and rotated, masks transformed alike and thresholded.

    ``batch["image"]`` (B, H, W, 1) uint8 or float, ``batch["mask"]`` (B, H, W) uint8 (0-255,
    soft edges from resizing) or float in [0, 1]; row ``i`` is the example at global position
    ``first_position + i``.
    """
    images = to_unit_range(batch["image"])
    masks = batch["mask"]
    masks = masks.astype(jnp.float32) / 255.0 if masks.dtype == jnp.uint8 else masks.astype(jnp.float32)
    if degrees or flip:
        positions = first_position + jnp.arange(images.shape[0])
        angles, flips = draw_flip_rotate(key, positions, degrees, flip)
        both = flip_rotate(jnp.concatenate([images, masks[..., None]], axis=-1), angles, flips)
        images, masks = jnp.clip(both[..., :1], 0.0, 1.0), both[..., 1]
    return {**batch, "image": images, "mask": (masks >= 0.5).astype(jnp.float32)}


def make_train_augment(config, stage_number: int) -> Callable | None:
    """``augment(step, batch, labelled_batch) -> (batch, labelled_batch)`` for the train step, or
    None when ``config.data.augment_on`` is "host" (the host pipeline augmented already)."""
    augment_on = str(config.data.augment_on)
    check_augment_on(augment_on)
    if augment_on == "host":
        return None
    degrees, flip = float(config.data.rotate_degrees), bool(config.data.flip)
    batch_size, labelled_size = int(config.data.batch_size), int(config.data.labelled_batch_size)
    key = jax.random.fold_in(jax.random.key(int(config.seed)), stage_number)

    def augment(step, batch, labelled_batch):
        step = jnp.asarray(step, jnp.int32)
        batch = augment_batch(batch, jax.random.fold_in(key, TRAIN_STREAM), step * batch_size,
                              degrees=degrees, flip=flip)
        if labelled_batch is not None:
            labelled_batch = augment_batch(labelled_batch, jax.random.fold_in(key, LABELLED_STREAM),
                                           step * labelled_size, degrees=degrees, flip=flip)
        return batch, labelled_batch

    return augment
