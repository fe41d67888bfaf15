"""Convolutions in forms XLA's CPU backend runs faster (``model.conv_impl``).

Two rewrites, each exact up to float rounding and measured in docs/PERFORMANCE.md:

* ``flipped_dx``: the data gradient of stride-1 convolutions as a forward convolution;
* ``s2d``: a strided convolution with one input channel (the 7x7/2 stem) as a stride-1
  convolution of the space-to-depth input: 2.3-2.8x faster forward.

Data gradient. For a stride-1, 'SAME'-padded NHWC/HWIO convolution ``y = conv(x, w)`` the gradient with
respect to ``x`` is itself a stride-1 convolution of ``dy`` with the spatially flipped kernel
whose in/out channels are swapped::

    dx = conv(dy, flip_hw(w).transpose(0, 1, 3, 2))          # same padding as the forward

XLA lowers its own transposed convolution to a slower kernel on CPU (measured 1.1-1.9x
slower per layer, docs/PERFORMANCE.md), so `conv_general_dilated` writes ``dx`` this way
through `jax.custom_vjp`; the forward pass and the filter gradient stay XLA's (matmul
formulations of the filter gradient measured 2-5x slower). Strided convolutions with more
than one input channel, dilation, groups and other layouts go to
`jax.lax.conv_general_dilated` unchanged.

Drop-in for flax: ``nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)`` keeps
parameter names and shapes, so checkpoints do not depend on the choice.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "flipped_dx", "flipped_dx+s2d")
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _same_padding(kernel_hw, padding) -> bool:
    return all(k % 2 == 1 and tuple(p) == (k // 2, k // 2) for k, p in zip(kernel_hw, padding))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_s1_fwd(x, w, padding):
    return _conv_s1(x, w, padding), (x, w)


def _conv_s1_bwd(padding, residuals, dy):
    x, w = residuals
    w_flipped = jax.numpy.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, Cout, Cin)
    dx = lax.conv_general_dilated(dy, w_flipped, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _, filter_vjp = jax.vjp(lambda w_: lax.conv_general_dilated(
        x, w_, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")), w)
    (dw,) = filter_vjp(dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def space_to_depth_conv(x, w, stride: int, padding):
    """``conv(x, w, stride, padding)`` (NHWC/HWIO) computed as a stride-1 conv on s x s blocks.

    Space-to-depth turns the input into (B, Hp/s, Wp/s, s*s*C) and the kernel, zero-padded to
    a multiple of s taps, into (K/s, K/s, s*s*C, O); the stride-1 VALID conv of the two is the
    strided conv. For one input channel XLA's CPU conv runs this 2.3-2.8x faster than the
    strided form (7x7/2 stem, docs/PERFORMANCE.md) despite the zero taps (64 vs 49).
    Gradients are JAX's own, through the reshapes.
    """
    b, h, wd, c = x.shape
    k, o = w.shape[0], w.shape[-1]
    (top, bottom), (left, right) = padding
    out_h = (h + top + bottom - k) // stride + 1
    out_w = (wd + left + right - w.shape[1]) // stride + 1
    kk = -(-max(k, w.shape[1]) // stride) * stride          # taps, rounded up to a multiple of s
    # Pad so each side is a multiple of s and covers every window of the padded kernel;
    # the rows past the original padding only meet zero taps or cropped outputs.
    hp = -(-max(h + top + bottom, stride * (out_h - 1) + kk) // stride) * stride
    wp = -(-max(wd + left + right, stride * (out_w - 1) + kk) // stride) * stride
    xp = jnp.pad(x, ((0, 0), (top, hp - h - top), (left, wp - wd - left), (0, 0)))
    xs = xp.reshape(b, hp // stride, stride, wp // stride, stride, c).transpose(0, 1, 3, 2, 4, 5)
    xs = xs.reshape(b, hp // stride, wp // stride, stride * stride * c)
    wk = jnp.pad(w, ((0, kk - k), (0, kk - w.shape[1]), (0, 0), (0, 0)))
    ws = wk.reshape(kk // stride, stride, kk // stride, stride, c, o).transpose(0, 2, 1, 3, 4, 5)
    ws = ws.reshape(kk // stride, kk // stride, stride * stride * c, o)
    y = lax.conv_general_dilated(xs, ws, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, :out_h, :out_w, :]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *, space_to_depth: bool = False) -> Any:
    """`jax.lax.conv_general_dilated`'s signature; plain NHWC/HWIO convs are rewritten.

    Stride-1 SAME convs get the flipped-kernel dx; with ``space_to_depth``, convs with equal
    strides > 1 and one input channel run as `space_to_depth_conv`. Anything else (dilation,
    groups, other layouts, string padding) is `jax.lax.conv_general_dilated` unchanged.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        lhs.ndim == 4 and dn == _NHWC and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1 and batch_group_count == 1 and precision is None
        and preferred_element_type is None and lhs.dtype == rhs.dtype
    )
    if plain:
        strides = tuple(int(s) for s in window_strides)
        pads = tuple(tuple(int(v) for v in p) for p in padding)
        if strides == (1, 1) and _same_padding(rhs.shape[:2], pads):
            return _conv_s1(lhs, rhs, pads)
        if space_to_depth and strides[0] == strides[1] > 1 and lhs.shape[-1] == 1:
            return space_to_depth_conv(lhs, rhs, strides[0], pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)


def conv_function(conv_impl: str):
    """The ``conv_general_dilated`` callable for ``model.conv_impl`` (one of `CONV_IMPLS`)."""
    if conv_impl == "xla":
        return lax.conv_general_dilated
    if conv_impl == "flipped_dx":
        return conv_general_dilated
    if conv_impl == "flipped_dx+s2d":
        return partial(conv_general_dilated, space_to_depth=True)
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}; fix it in the config.")
