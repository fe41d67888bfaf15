"""pcam_jax.models.conv: the flipped-kernel data gradient and the space-to-depth strided conv equal XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pcam_jax.models import conv as conv_lib

# (input shape, kernel hw, stride) of the encoder's convolutions at 32x32 input, channel
# counts as in the default network; strides 2 with several channels take the XLA path, the
# one-channel strided ones (the 7x7 stem, odd sizes, stride 3) the space-to-depth one.
CASES = [((2, 8, 8, 16), 3, 1), ((2, 8, 8, 16), 3, 2), ((2, 4, 4, 32), 3, 1), ((2, 4, 4, 32), 1, 2),
         ((2, 2, 2, 64), 3, 1), ((2, 2, 2, 128), 3, 1), ((2, 16, 16, 1), 7, 2), ((1, 5, 6, 3), 3, 1),
         ((1, 15, 13, 1), 7, 2), ((2, 12, 12, 1), 5, 3), ((1, 9, 10, 1), 3, 2), ((1, 8, 8, 1), 2, 2)]


def _inputs(shape, k, cout, seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.standard_normal(shape, np.float32))
    w = jnp.asarray(r.standard_normal((k, k, shape[-1], cout), np.float32))
    return x, w


def _numpy_conv(x, w, stride, pad):
    """Direct loop reference: y[b,i,j,o] = sum x_pad[b, i*s+u, j*s+v, c] w[u,v,c,o]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for u in range(k):
        for v in range(k):
            y += np.einsum("bhwc,co->bhwo", xp[:, u:u + stride * ho:stride, v:v + stride * wo:stride], w[u, v])
    return y


@pytest.mark.parametrize("impl", ["flipped_dx", "flipped_dx+s2d"])
@pytest.mark.parametrize("shape,k,stride", CASES)
def test_outputs_and_gradients_match_lax(shape, k, stride, impl):
    cout = max(shape[-1], 4)
    x, w = _inputs(shape, k, cout)
    pad = [(k // 2, k // 2)] * 2
    conv = conv_lib.conv_function(impl)
    ours = lambda x, w: conv(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(ours(x, w), _numpy_conv(x, w, stride, k // 2), rtol=1e-4, atol=1e-3)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal(ref(x, w).shape, np.float32))
    for fn in (lambda f: f, jax.jit):
        grads = fn(lambda x, w: jax.vjp(ours, x, w)[1](dy))(x, w)
        expected = jax.vjp(ref, x, w)[1](dy)
        for g, e in zip(grads, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


def test_data_gradient_against_finite_differences():
    x, w = _inputs((1, 5, 5, 2), 3, 3)
    loss = lambda x: jnp.sum(jnp.sin(conv_lib.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    g = np.asarray(jax.grad(loss)(x))
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (0, 2, 3, 1), (0, 4, 4, 0)]:
        e = np.zeros(x.shape, np.float32)
        e[idx] = eps
        fd = (loss(x + e) - loss(x - e)) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=2e-2)


def test_under_vmap():
    x, w = _inputs((3, 2, 6, 6, 4), 3, 5)
    pad = [(1, 1), (1, 1)]
    f = lambda impl: lambda x, w: jnp.sum(impl(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    ours = jax.jit(jax.vmap(jax.grad(f(conv_lib.conv_general_dilated), argnums=(0, 1)), in_axes=(0, None)))(x, w)
    ref = jax.vmap(jax.grad(f(lax.conv_general_dilated), argnums=(0, 1)), in_axes=(0, None))(x, w)
    for g, e in zip(ours, ref):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


def test_model_parameters_do_not_depend_on_conv_impl():
    from pcam_jax.models import NetworkSpec, PCAMNet

    x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    trees = {}
    for impl in conv_lib.CONV_IMPLS:
        model = PCAMNet(NetworkSpec(conv_impl=impl))
        v = model.init(jax.random.key(0), x, train=False)
        trees[impl] = (v, model)
    va, ma = trees["xla"]

    def loss(params, model):
        (logits, _), _ = model.apply({"params": params, "batch_stats": va["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(logits ** 2)

    ga = jax.grad(loss)(va["params"], ma)
    for impl in conv_lib.CONV_IMPLS[1:]:
        vb, mb = trees[impl]
        assert jax.tree.structure(va) == jax.tree.structure(vb)
        assert jax.tree.map(jnp.shape, va) == jax.tree.map(jnp.shape, vb)
        gb = jax.grad(loss)(va["params"], mb)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_unknown_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="conv_impl"):
        conv_lib.conv_function("cudnn")
