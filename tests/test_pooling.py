"""pcam_jax.models.pooling: the strided max-pool and its gradient against a numpy loop and flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax.models import pooling

# (input shape, window, strides, padding): the encoder's 3x3/2 pool at even and odd sizes,
# then windows that do not divide, overlap differently, or have no padding.
CASES = [((2, 8, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
         ((1, 9, 7, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
         ((2, 6, 6, 1), (2, 2), (2, 2), ((0, 0), (0, 0))),
         ((1, 7, 8, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
         ((1, 10, 9, 1), (3, 2), (3, 2), ((0, 2), (1, 0))),
         ((1, 5, 5, 1), (2, 2), (3, 3), ((0, 0), (0, 0)))]


def _numpy_max_pool(x, window, strides, padding):
    """Loop reference: y and the gradient map of each output to its first maximal input."""
    x = np.asarray(x, np.float64)
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-np.inf)
    ho = (xp.shape[1] - window[0]) // strides[0] + 1
    wo = (xp.shape[2] - window[1]) // strides[1] + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    argmax = np.zeros(y.shape + (2,), int)          # padded-input (row, col) of the first maximum
    for b, i, j, c in np.ndindex(y.shape):
        best, where = -np.inf, None
        for u in range(window[0]):
            for v in range(window[1]):
                r, q = i * strides[0] + u, j * strides[1] + v
                if where is None or xp[b, r, q, c] > best:
                    best, where = xp[b, r, q, c], (r, q)
        y[b, i, j, c], argmax[b, i, j, c] = best, where
    return y, argmax


def _numpy_grad(x_shape, dy, argmax, padding):
    dxp = np.zeros((x_shape[0], x_shape[1] + sum(padding[0]), x_shape[2] + sum(padding[1]), x_shape[3]))
    for b, i, j, c in np.ndindex(dy.shape):
        r, q = argmax[b, i, j, c]
        dxp[b, r, q, c] += dy[b, i, j, c]
    return dxp[:, padding[0][0]:padding[0][0] + x_shape[1], padding[1][0]:padding[1][0] + x_shape[2]]


def _tied_input(shape, seed=0):
    """Small integers after a ReLU: most windows hold ties, so first-maximum choice matters."""
    r = np.random.default_rng(seed)
    return jnp.asarray(np.maximum(r.integers(-3, 3, shape), 0).astype(np.float32))


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_forward_and_gradient_match_numpy_loop(shape, window, strides, padding):
    x = _tied_input(shape)
    y_ref, argmax = _numpy_max_pool(x, window, strides, padding)
    pool = jax.jit(lambda x: pooling.max_pool(x, window, strides, padding))
    y, vjp = jax.vjp(pool, x)
    np.testing.assert_array_equal(y, y_ref)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(vjp(jnp.asarray(dy))[0], _numpy_grad(x.shape, dy, argmax, padding), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_equals_flax_max_pool_with_ties(shape, window, strides, padding):
    x = _tied_input(shape, seed=2)
    ours, theirs = (lambda x: pooling.max_pool(x, window, strides, padding)), (lambda x: nn.max_pool(x, window, strides, padding))
    np.testing.assert_array_equal(ours(x), theirs(x))
    dy = jnp.asarray(np.random.default_rng(3).standard_normal(ours(x).shape).astype(np.float32))
    np.testing.assert_allclose(jax.vjp(ours, x)[1](dy)[0], jax.vjp(theirs, x)[1](dy)[0], rtol=1e-6, atol=1e-6)


def test_fallbacks_and_errors():
    x = _tied_input((1, 6, 6, 2))
    # String padding other than VALID goes to flax unchanged.
    np.testing.assert_array_equal(pooling.max_pool(x, (3, 3), (2, 2), "SAME"), nn.max_pool(x, (3, 3), (2, 2), "SAME"))
    np.testing.assert_array_equal(pooling.max_pool(x, (2, 2), (2, 2), "VALID"), nn.max_pool(x, (2, 2), (2, 2), "VALID"))
    assert pooling.pool_function("xla") is nn.max_pool
    with pytest.raises(ValueError, match="pool_impl"):
        pooling.pool_function("cudnn")


def test_model_results_do_not_depend_on_pool_impl():
    from pcam_jax.models import NetworkSpec, PCAMNet

    x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    models = {impl: PCAMNet(NetworkSpec(pool_impl=impl)) for impl in pooling.POOL_IMPLS}
    variables = models["xla"].init(jax.random.key(0), x, train=False)

    def loss(params, model):
        (logits, _), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                     mutable=["batch_stats"])
        return jnp.sum(logits ** 2)

    ref = jax.value_and_grad(loss)(variables["params"], models["xla"])
    ours = jax.value_and_grad(loss)(variables["params"], models["strided"])
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
