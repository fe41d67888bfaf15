"""Max pooling with a gradient XLA's CPU backend computes fast (``model.pool_impl``).

``lax.reduce_window``'s gradient is a select-and-scatter, which XLA's CPU backend expands
into a scatter over (value, index) pairs: for the encoder's 3x3/2 pool it cost 4-8x the
whole pooling forward (docs/PERFORMANCE.md). Here the same pool is written with strided
slices, and its VJP with elementwise ops that XLA fuses:

* forward: ``y = max_t x_pad[t + stride * o]`` over the window taps ``t``, each tap one
  strided slice of the (-inf padded) input;
* backward: each output's gradient goes to the *first* tap (row-major window order) that
  equals the maximum, the choice XLA's select-and-scatter and PyTorch make, so results equal
  ``flax.linen.max_pool``'s bit for bit in the forward and exactly in the gradient, ties included;
* the input gradient is assembled per stride phase: input row ``r = stride * a + p``
  receives from taps ``i = p + stride * u`` of output row ``a - u``; so each of the
  stride**2 phase planes is a sum of shifted masked copies of ``dy``, and one reshape
  interleaves the planes. No scatter, no interior padding.

`max_pool` takes `flax.linen.max_pool`'s arguments for NHWC batches with explicit padding.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

POOL_IMPLS = ("xla", "strided")


def _taps(xp, out_hw, window, strides):
    """The window taps (row-major) as strided slices of the padded input, each (B, Ho, Wo, C)."""
    (ho, wo), (sh, sw) = out_hw, strides
    return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3]),
                      (1, sh, sw, 1))
            for i in range(window[0]) for j in range(window[1])]


def _pad_and_out_hw(x, window, strides, padding):
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)), constant_values=-jnp.inf)
    out_hw = tuple((xp.shape[d + 1] - window[d]) // strides[d] + 1 for d in range(2))
    return xp, out_hw


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    xp, out_hw = _pad_and_out_hw(x, window, strides, padding)
    taps = _taps(xp, out_hw, window, strides)
    y = taps[0]
    for tap in taps[1:]:
        y = jnp.maximum(y, tap)
    return y


def _max_pool_fwd(x, window, strides, padding):
    y = _max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
    x, y = residuals
    xp, (ho, wo) = _pad_and_out_hw(x, window, strides, padding)
    (sh, sw), (kh, kw) = strides, window
    # Gradient of each tap: dy where the tap is the first maximum of its window.
    taken = jnp.zeros(y.shape, bool)
    tap_grads = {}
    for t, tap in enumerate(_taps(xp, (ho, wo), window, strides)):
        first_max = (tap == y) & ~taken
        taken = taken | first_max
        tap_grads[divmod(t, kw)] = jnp.where(first_max, dy, jnp.zeros((), dy.dtype))
    # Phase planes: padded-input row sh * a + p gets tap i = p + sh * u of output row a - u.
    ah, aw = -(-xp.shape[1] // sh), -(-xp.shape[2] // sw)  # rows/cols per phase plane
    zero = jnp.zeros((), dy.dtype)
    rows = []
    for p in range(sh):
        cols = []
        for q in range(sw):
            plane = jnp.zeros((x.shape[0], ah, aw, x.shape[3]), dy.dtype)
            for i in range(p, kh, sh):
                for j in range(q, kw, sw):
                    u, v = (i - p) // sh, (j - q) // sw
                    # Shift down by u (right by v) and fit to (ah, aw); lax.pad crops with negative pads.
                    plane = plane + lax.pad(tap_grads[(i, j)], zero,
                                            ((0, 0, 0), (u, ah - ho - u, 0), (v, aw - wo - v, 0), (0, 0, 0)))
            cols.append(plane)
        rows.append(jnp.stack(cols, axis=3))            # (B, ah, aw, sw, C)
    dxp = jnp.stack(rows, axis=2)                         # (B, ah, sh, aw, sw, C)
    dxp = dxp.reshape(x.shape[0], ah * sh, aw * sw, x.shape[3])
    (top, _), (left, _) = padding
    return (dxp[:, top:top + x.shape[1], left:left + x.shape[2], :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(inputs: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[Sequence[int]] = "VALID") -> jax.Array:
    """`flax.linen.max_pool` for (B, H, W, C) float batches, with the fused gradient above.

    Other ranks, string padding other than "VALID", and non-float dtypes go to
    `flax.linen.max_pool` unchanged.
    """
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    if padding == "VALID":
        padding = ((0, 0), (0, 0))
    if inputs.ndim != 4 or isinstance(padding, str) or not jnp.issubdtype(inputs.dtype, jnp.floating):
        return nn.max_pool(inputs, tuple(window_shape), strides, padding)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    return _max_pool(inputs, tuple(int(k) for k in window_shape), tuple(int(s) for s in strides), padding)


def pool_function(pool_impl: str):
    """The ``max_pool`` callable for ``model.pool_impl`` ("strided" or "xla")."""
    if pool_impl == "xla":
        return nn.max_pool
    if pool_impl == "strided":
        return max_pool
    raise ValueError(f"model.pool_impl must be one of {POOL_IMPLS}, got {pool_impl!r}; fix it in the config.")
