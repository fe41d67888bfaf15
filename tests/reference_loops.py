"""Slow, obvious reference loops shared by tests (the independent side of a numeric check)."""

import math

import numpy as np


def bilinear_loop(maps, height, width):
    """Half-pixel-centre bilinear resize, source coordinates clamped (OpenCV INTER_LINEAR,
    tf.image.resize without antialiasing), one output pixel at a time: (B, h, w) -> (B, H, W)."""
    b, h, w = maps.shape
    out = np.zeros((b, height, width))
    for i in range(height):
        y = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1)
        y0 = int(math.floor(y)); y1 = min(y0 + 1, h - 1); fy = y - y0
        for j in range(width):
            x = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1)
            x0 = int(math.floor(x)); x1 = min(x0 + 1, w - 1); fx = x - x0
            out[:, i, j] = ((1 - fy) * (1 - fx) * maps[:, y0, x0] + (1 - fy) * fx * maps[:, y0, x1]
                            + fy * (1 - fx) * maps[:, y1, x0] + fy * fx * maps[:, y1, x1])
    return out
