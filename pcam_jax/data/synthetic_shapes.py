"""Shapes drawn analytically on the pixel grid of `pcam_jax.data.synthetic`: pixel-centre
coordinates in [0, 1], anti-aliased coverage from signed distances, and a hollow tube's chords
(why a bone's cortex is brighter than its marrow)."""

from __future__ import annotations

import functools

import numpy as np


def tube_chords(rho: np.ndarray, inner_ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Path lengths through a hollow tube (outer radius 1), for rays at distance rho from its axis.

    Returns (cortex, marrow) chord lengths, same shape as rho: the cortex is the shell between
    radius inner_ratio and 1, the marrow the core. Rays near the inner wall cross the most cortex,
    which is why a bone's outline is brighter than its middle on a radiograph.
    """
    outer = 2.0 * np.sqrt(np.maximum(1.0 - rho**2, 0.0))
    inner = 2.0 * np.sqrt(np.maximum(inner_ratio**2 - rho**2, 0.0))
    return outer - inner, inner


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (size, size) float64 in (0, 1); read-only."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.flags.writeable = y.flags.writeable = False
    return x, y


def coverage(signed_distance: np.ndarray, pixel: float, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-ness in [0, 1] of a shape given its signed distance (< 0 inside)."""
    return np.clip(0.5 - signed_distance / (pixel * softness), 0.0, 1.0)


def segment_distance(x, y, p0, p1) -> np.ndarray:
    """Distance from every pixel to the segment p0-p1."""
    d = np.subtract(p1, p0)
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / max(d @ d, 1e-12), 0.0, 1.0)
    return norm(x - p0[0] - t * d[0], y - p0[1] - t * d[1])


def norm(a, b) -> np.ndarray:
    """sqrt(a^2 + b^2): faster than np.hypot; no overflow at these scales."""
    return np.sqrt(a * a + b * b)


def bbox(points, pad: float, size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the pixels within `pad` of the bounding box of `points` (k, 2)."""
    lo = np.floor((np.min(points, 0) - pad) * size).astype(int).clip(0, size)
    hi = np.ceil((np.max(points, 0) + pad) * size).astype(int).clip(0, size)
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def box_distance(along, across, center, half_along, half_across) -> np.ndarray:
    """Signed distance to an axis-aligned box in a bone's (along, across) frame."""
    qa = np.abs(along - center[0]) - half_along
    qc = np.abs(across - center[1]) - half_across
    return norm(np.maximum(qa, 0.0), np.maximum(qc, 0.0)) + np.minimum(np.maximum(qa, qc), 0.0)
