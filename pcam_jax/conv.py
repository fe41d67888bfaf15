"""Convolution with a cheaper data gradient on XLA's CPU backend (``model.conv_impl``).

For a stride-1, 'SAME'-padded NHWC/HWIO convolution ``y = conv(x, w)`` the gradient with
respect to ``x`` is itself a stride-1 convolution of ``dy`` with the spatially flipped kernel
whose in/out channels are swapped::

    dx = conv(dy, flip_hw(w).transpose(0, 1, 3, 2))          # same padding as the forward

XLA lowers its own transposed convolution to a slower kernel on CPU (measured 1.1-1.9x
slower per layer, docs/PERFORMANCE.md), so `conv_general_dilated` writes ``dx`` this way
through `jax.custom_vjp`; the forward pass and the filter gradient stay XLA's (matmul
formulations of the filter gradient measured 2-5x slower). Any other convolution (strides,
dilation, groups, other layouts) goes to `jax.lax.conv_general_dilated` unchanged.

Drop-in for flax: ``nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)`` keeps
parameter names and shapes, so checkpoints do not depend on the choice.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
from jax import lax

CONV_IMPLS = ("xla", "flipped_dx")
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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None) -> Any:
    """`jax.lax.conv_general_dilated`'s signature; stride-1 SAME NHWC/HWIO convs get the flipped-kernel dx."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    simple = (
        lhs.ndim == 4 and dn == _NHWC and not isinstance(padding, str)
        and tuple(window_strides) == (1, 1)
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1 and batch_group_count == 1 and precision is None
        and preferred_element_type is None and lhs.dtype == rhs.dtype
        and _same_padding(rhs.shape[:2], padding)
    )
    if simple:
        return _conv_s1(lhs, rhs, tuple(tuple(int(v) for v in p) for p in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)


def conv_function(conv_impl: str):
    """The ``conv_general_dilated`` callable for ``model.conv_impl`` ("xla" or "flipped_dx")."""
    if conv_impl == "xla":
        return lax.conv_general_dilated
    if conv_impl == "flipped_dx":
        return conv_general_dilated
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}; fix it in the config.")
