"""pcam_jax.maps.pixel_attribution against numpy loops with closed-form gradients.

Model: ``f(x) = sum_hwc(w * tanh(a * x)) + b`` per image, so ``df/dx = w * a * (1 - tanh(a x)^2)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pcam_jax.maps import pixel_attribution as pa

pytestmark = pytest.mark.usefixtures("fast_compilation")


class TanhModel:
    def __init__(self, seed, h, w, c=1):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(h, w, c)).astype(np.float32)
        self.a = np.float32(1.7)

    def score_fn(self, x):
        return jnp.sum(self.w * jnp.tanh(self.a * x), axis=(1, 2, 3)) + 0.2

    def score_np(self, x):
        return (self.w * np.tanh(self.a * np.asarray(x, np.float64))).sum(axis=(1, 2, 3)) + 0.2

    def grad_np(self, x):
        return self.w * self.a * (1.0 - np.tanh(self.a * np.asarray(x, np.float64)) ** 2)


def images_for(seed, b, h, w, c=1):
    return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


def integrated_gradients_loop(model, images, baseline, num_steps, rule):
    out = np.zeros(images.shape)
    for b in range(images.shape[0]):
        ks = range(1, num_steps + 1) if rule == "riemann_right" else range(num_steps + 1)
        total = np.zeros(images.shape[1:])
        for k in ks:
            weight = 0.5 if rule == "trapezoid" and k in (0, num_steps) else 1.0
            point = baseline[b] + (k / num_steps) * (images[b] - baseline[b])
            total += weight * model.grad_np(point)
        out[b] = (images[b] - baseline[b]) * total / num_steps
    return out


@pytest.mark.parametrize("rule", pa.RULES)
@pytest.mark.parametrize("num_steps,chunk", [(5, 2), (4, 16)])  # 5 steps in chunks of 2: padded
def test_integrated_gradients_equal_a_numpy_loop(rule, num_steps, chunk):
    model = TanhModel(0, 4, 5, 2)
    images = images_for(1, 3, 4, 5, 2)
    baseline = images_for(2, 3, 4, 5, 2) * 0.3
    got = jax.jit(pa.integrated_gradients, static_argnums=0, static_argnames=("num_steps", "chunk", "rule"))(
        model.score_fn, images, baseline, num_steps=num_steps, chunk=chunk, rule=rule)
    np.testing.assert_allclose(got, integrated_gradients_loop(model, images, baseline, num_steps, rule),
                               rtol=1e-5, atol=1e-6)


def test_integrated_gradients_are_complete_and_exact_for_a_linear_score():
    model = TanhModel(3, 6, 6)
    images = images_for(4, 2, 6, 6)
    attributions = pa.integrated_gradients(model.score_fn, images, 0.0, num_steps=64, rule="trapezoid")
    gap = model.score_np(images) - model.score_np(np.zeros_like(images))
    np.testing.assert_allclose(np.asarray(attributions).sum(axis=(1, 2, 3)), gap, rtol=2e-3)
    w = model.w
    linear = pa.integrated_gradients(lambda x: jnp.sum(w * x, axis=(1, 2, 3)), images, 0.5, num_steps=3)
    np.testing.assert_allclose(linear, w * (images - 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_smooth_grad_equals_a_numpy_loop_over_the_same_draws(squared):
    model = TanhModel(5, 4, 4)
    images = images_for(6, 2, 4, 4)
    key = jax.random.key(7)
    num_samples, level = 5, 0.2
    sigma = level * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))[:, None, None, None]
    want = np.zeros(images.shape)
    for n in range(num_samples):
        noise = np.asarray(jax.random.normal(jax.random.fold_in(key, n), images.shape))
        g = model.grad_np(images + sigma * noise)
        want += (g * g if squared else g) / num_samples
    for chunk in (2, 5):
        got = pa.smooth_grad(model.score_fn, images, key, num_samples, level, chunk, squared)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gradients_saliency_map_and_target_logit():
    model = TanhModel(8, 3, 3, 2)
    images = images_for(9, 2, 3, 3, 2)
    grads = pa.input_gradients(model.score_fn, images)
    np.testing.assert_allclose(grads, model.grad_np(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pa.saliency_map(grads), np.abs(model.grad_np(images)).sum(-1), rtol=1e-5)
    logits = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(pa.target_logit(lambda x: x, np.array([1, 0]))(logits), [2.0, 3.0])
    with pytest.raises(ValueError, match="rule"):
        pa.integrated_gradients(model.score_fn, images, rule="left")


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_batch_gives_the_unsharded_result(axis_type):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    model = TanhModel(10, 4, 4)
    images = images_for(11, 8, 4, 4)

    @jax.jit
    def run(x):
        return {"ig": pa.integrated_gradients(model.score_fn, x, 0.0, num_steps=4, chunk=3),
                "sg": pa.smooth_grad(model.score_fn, x, jax.random.key(0), num_samples=3, chunk=2)}

    plain = run(images)
    with jax.set_mesh(mesh):
        sharded = run(jax.device_put(images, NamedSharding(mesh, P("data"))))
    for name in plain:
        assert sharded[name].sharding.spec[0] == "data", name
        np.testing.assert_allclose(sharded[name], plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
