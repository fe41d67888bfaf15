"""pcam_jax.maps against independent references: slow numpy loops, closed forms, properties.

The gradient-based methods are checked on a small closed-form model whose feature-map
gradient is known exactly: features = relu(patches(image) @ P + b0), logits =
mean_hw(features * S) @ W + bias, so d logit_c / d features[i, j, k] = S[i, j, k] W[k, c] / (h w).
S has zeros (exercising Grad-CAM++'s "zero where grads == 0") and both signs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pcam_jax import maps
from pcam_jax.maps import pixel_attribution as pa
from pcam_jax.configs import get_config
from pcam_jax.models import classifier_apply_fn, create_model

# (B, h, w, K, C) for the contraction tests: several shapes, 2 and 3 classes.
SHAPES = [(2, 3, 4, 5, 2), (3, 5, 5, 7, 2), (4, 2, 6, 3, 3)]


# ----------------------------------------------------------------------------- references


def cam_loop(features, weights, targets, positive=False, logit_difference=False):
    b_, h, w, k_ = features.shape
    out = np.zeros((b_, h, w))
    for b in range(b_):
        c = targets[b]
        for k in range(k_):
            wk = weights[k, c] - (weights[k, 1 - c] if logit_difference else 0.0)
            if positive:
                wk = max(wk, 0.0)
            out[b] += wk * features[b, :, :, k]
    return out


def grad_cam_loop(features, grads):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        for k in range(features.shape[3]):
            out[b] += grads[b, :, :, k].mean() * features[b, :, :, k]
    return np.maximum(out, 0)


def grad_cam_pp_loop(features, grads):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        for k in range(features.shape[3]):
            g, a = grads[b, :, :, k], features[b, :, :, k]
            alpha = g ** 2 / (2 * g ** 2 + a.sum() * g ** 3 + 1e-6)
            alpha[g == 0] = 0.0
            out[b] += (np.maximum(g, 0) * alpha).sum() * a
    return np.maximum(out, 0)


def layer_cam_loop(features, grads):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        for i in range(features.shape[1]):
            for j in range(features.shape[2]):
                out[b, i, j] = max(0.0, sum(max(g, 0.0) * a for g, a in zip(grads[b, i, j], features[b, i, j])))
    return out


def hires_cam_loop(features, grads):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        for k in range(features.shape[3]):
            out[b] += grads[b, :, :, k] * features[b, :, :, k]
    return np.maximum(out, 0)


def xgrad_cam_loop(features, grads):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        for k in range(features.shape[3]):
            g, a = grads[b, :, :, k], features[b, :, :, k]
            out[b] += (g * a / (a.sum() + 1e-7)).sum() * a
    return np.maximum(out, 0)


def resize_loop(image, height, width, align_corners=False):
    """Separable linear interpolation with np.interp (which clamps at the ends)."""
    def coords(n_in, n_out):
        if align_corners:
            return np.linspace(0, n_in - 1, n_out)
        return (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    h, w = image.shape
    rows = np.stack([np.interp(coords(w, width), np.arange(w), image[i]) for i in range(h)])
    return np.stack([np.interp(coords(h, height), np.arange(h), rows[:, j]) for j in range(width)], axis=1)


def minmax_loop(image, eps):
    image = image - image.min()
    return image / (eps + image.max())


class LinearModel:
    """The closed-form model of the module docstring, in numpy and as a JAX apply_fn."""

    def __init__(self, seed, h, w, k, c, s):
        rng = np.random.default_rng(seed)
        self.h, self.w, self.s = h, w, s
        self.proj = rng.normal(size=(s * s, k)).astype(np.float32)
        self.bias0 = (0.3 * rng.normal(size=k)).astype(np.float32)
        gain = rng.normal(size=(h, w, k))
        gain[rng.random((h, w, k)) < 0.2] = 0.0
        self.gain = gain.astype(np.float32)
        self.kernel = rng.normal(size=(k, c)).astype(np.float32)
        self.bias = rng.normal(size=c).astype(np.float32)

    def features_np(self, images):
        b = images.shape[0]
        x = np.asarray(images, np.float64)[..., 0].reshape(b, self.h, self.s, self.w, self.s)
        patches = x.transpose(0, 1, 3, 2, 4).reshape(b, self.h, self.w, self.s * self.s)
        return np.maximum(patches @ self.proj + self.bias0, 0.0)

    def logits_np(self, images):
        return (self.features_np(images) * self.gain).mean(axis=(1, 2)) @ self.kernel + self.bias

    def grads_np(self, targets):
        return np.stack([self.gain * self.kernel[:, c] / (self.h * self.w) for c in targets])

    def head_np(self, features):
        return (features * self.gain).mean(axis=(1, 2)) @ self.kernel + self.bias

    def head_fn(self, features):
        return jnp.mean(features * self.gain, axis=(1, 2)) @ self.kernel + self.bias

    def apply_fn(self, images, feature_perturbation=None):
        # patches @ proj as an s x s, stride-s convolution (no reshape: fine on explicit meshes).
        kernel = self.proj.reshape(self.s, self.s, 1, -1)
        conv = jax.lax.conv_general_dilated(images, kernel, (self.s, self.s), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)
        features = jax.nn.relu(conv + self.bias0)
        if feature_perturbation is not None:
            features = features + feature_perturbation
        return jnp.mean(features * self.gain, axis=(1, 2)) @ self.kernel + self.bias, features


def random_images(seed, b, model):
    return np.random.default_rng(seed).random((b, model.h * model.s, model.w * model.s, 1)).astype(np.float32)


# ----------------------------------------------------------------------------- CAM, positive CAM


@pytest.mark.parametrize("shape", SHAPES)
def test_cam_and_positive_cam_equal_numpy_loops(shape):
    b, h, w, k, c = shape
    rng = np.random.default_rng(sum(shape))
    features = rng.normal(size=(b, h, w, k)).astype(np.float32)
    weights = rng.normal(size=(k, c)).astype(np.float32)  # both signs
    targets = np.arange(b) % c  # every class appears
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps.cam(features, weights, targets), cam_loop(features, weights, targets), **tol)
    np.testing.assert_allclose(maps.positive_cam(features, weights, targets),
                               cam_loop(features, weights, targets, positive=True), **tol)
    if c == 2:
        np.testing.assert_allclose(maps.positive_cam(features, weights, targets, logit_difference=True),
                                   cam_loop(features, weights, targets, True, True), **tol)
    else:
        with pytest.raises(ValueError, match="2 classes"):
            maps.positive_cam(features, weights, targets, logit_difference=True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_cam_is_linear_in_the_weights(seed, a, b):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w1, w2 = rng.normal(size=(2, 5, 2)).astype(np.float32)
    targets = rng.integers(0, 2, size=2)
    combined = maps.cam(features, a * w1 + b * w2, targets)
    separate = a * maps.cam(features, w1, targets) + b * maps.cam(features, w2, targets)
    np.testing.assert_allclose(combined, separate, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_positive_cam_equals_cam_when_weights_are_nonnegative(seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(3, 4, 4, 6)).astype(np.float32)
    weights = np.abs(rng.normal(size=(6, 2))).astype(np.float32)
    targets = rng.integers(0, 2, size=3)
    np.testing.assert_allclose(maps.positive_cam(features, weights, targets), maps.cam(features, weights, targets),
                               rtol=1e-6, atol=1e-6)
    # ... and differs once a selected weight is negative.
    weights[:, targets[0]] *= -1
    assert not np.allclose(maps.positive_cam(features, weights, targets)[0], maps.cam(features, weights, targets)[0])


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same K"):
        maps.cam(np.zeros((1, 2, 2, 4)), np.zeros((5, 2)), np.zeros(1, int))
    with pytest.raises(ValueError, match="unknown map method"):
        maps.all_maps(None, np.zeros((4, 2)), np.zeros((1, 8, 8, 1)), methods=("cam", "gradcam"))


# ----------------------------------------------------------------------------- gradient-based maps


@pytest.mark.parametrize("dims", [(3, 4, 3, 5, 2, 2), (2, 2, 5, 4, 3, 3)])  # (B, h, w, K, C, stride)
def test_gradient_maps_equal_numpy_loops_with_closed_form_gradients(dims):
    b, h, w, k, c, s = dims
    model = LinearModel(sum(dims), h, w, k, c, s)
    images = random_images(1, b, model)
    features = model.features_np(images)
    for targets in (np.arange(b) % c, None):
        chosen = np.argmax(model.logits_np(images), axis=-1) if targets is None else targets
        grads = model.grads_np(chosen)
        assert (grads > 0).any() and (grads < 0).any() and (grads == 0).any()
        for name, loop in [("grad_cam", grad_cam_loop), ("grad_cam_pp", grad_cam_pp_loop),
                           ("layer_cam", layer_cam_loop), ("hires_cam", hires_cam_loop),
                           ("xgrad_cam", xgrad_cam_loop)]:
            got = jax.jit(getattr(maps, name), static_argnums=0)(model.apply_fn, images, targets)
            want = loop(features, grads)
            assert want.max() > 0
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max(), err_msg=name)


def test_grad_cam_is_relu_cam_over_area_for_a_gap_dense_head():
    model = create_model(get_config("tiny").model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))  # encoder + head only
    # A head kernel of both signs, so ReLU(CAM) is neither all zero nor all positive.
    kernel = jax.random.normal(jax.random.key(2), variables["params"]["head"]["dense"]["kernel"].shape)
    variables["params"]["head"]["dense"]["kernel"] = kernel
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1))

    @jax.jit
    def run(variables, targets):
        apply_fn = classifier_apply_fn(model, variables)
        logits, features = apply_fn(images)
        return logits, features, maps.grad_cam(apply_fn, images, targets), maps.grad_cam(apply_fn, images)

    for targets in (jnp.array([0, 1, 0, 1]), jnp.array([1, 1, 0, 0])):
        logits, features, got, got_predicted = run(variables, targets)
        h, w = features.shape[1:3]
        expected = np.maximum(cam_loop(np.asarray(features), np.asarray(kernel), np.asarray(targets)), 0) / (h * w)
        assert expected.max() > 0 and (expected == 0).any()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    # targets None = the predicted class.
    predicted = np.argmax(np.asarray(logits), axis=-1)
    np.testing.assert_allclose(got_predicted, run(variables, predicted)[2], rtol=1e-6)


# ----------------------------------------------------------------------------- Score-CAM


def score_cam_loop(model, images, targets, channel_softmax=True):
    features = model.features_np(images)
    b_, h, w, k_ = features.shape
    height, width = images.shape[1:3]
    out = np.zeros((b_, h, w))
    for b in range(b_):
        scores = []
        for k in range(k_):
            mask = minmax_loop(resize_loop(features[b, :, :, k], height, width, align_corners=True), 1e-8)
            logits = model.logits_np(images[b:b + 1] * mask[None, :, :, None])[0]
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            scores.append(logits[targets[b]] if channel_softmax else probs[targets[b]])
        scores = np.array(scores)
        weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if channel_softmax else scores
        for k in range(k_):
            out[b] += weights[k] * features[b, :, :, k]
    return np.maximum(out, 0)


@pytest.mark.parametrize("chunk", [2, 5])  # 2 pads K=5 to 6; 5 is one chunk
def test_score_cam_equals_a_per_channel_loop(chunk):
    model = LinearModel(3, 3, 3, 5, 2, 4)
    images = random_images(2, 3, model)
    targets = np.array([0, 1, 1])
    for channel_softmax in (True, False):
        got = maps.score_cam(model.apply_fn, images, targets, chunk=chunk, channel_softmax=channel_softmax)
        want = score_cam_loop(model, images, targets, channel_softmax)
        assert want.max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
    predicted = np.argmax(model.logits_np(images), axis=-1)
    np.testing.assert_allclose(maps.score_cam(model.apply_fn, images, chunk=chunk),
                               score_cam_loop(model, images, predicted), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- AblationCAM, EigenCAM


def ablation_cam_loop(model, features, targets):
    b_, h, w, k_ = features.shape
    out = np.zeros((b_, h, w))
    for b in range(b_):
        original = model.head_np(features[b:b + 1])[0, targets[b]]
        value = 0.0 if features[b].min() == 0 else features[b].min() - 1e7
        for k in range(k_):
            ablated = features[b:b + 1].copy()
            ablated[..., k] = value
            weight = (original - model.head_np(ablated)[0, targets[b]]) / original
            out[b] += weight * features[b, :, :, k]
    return np.maximum(out, 0)


@pytest.mark.parametrize("chunk", [2, 5])  # 2 pads K=5 to 6; 5 is one chunk
def test_ablation_cam_equals_a_per_channel_loop_with_and_without_a_head_fn(chunk):
    model = LinearModel(4, 3, 3, 5, 2, 4)
    images = random_images(5, 3, model)
    features = model.features_np(images)
    assert (features == 0).any()  # ReLU features: ablation sets channels to 0
    targets = np.array([0, 1, 1])
    want = ablation_cam_loop(model, features, targets)
    assert want.max() > 0
    fn = jax.jit(maps.ablation_cam, static_argnames=("apply_fn", "chunk", "head_fn"))
    for head_fn in (model.head_fn, None):  # head only, or a full forward per ablation
        got = fn(model.apply_fn, images, targets, chunk=chunk, head_fn=head_fn)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
    predicted = np.argmax(model.logits_np(images), axis=-1)
    np.testing.assert_allclose(fn(model.apply_fn, images, chunk=chunk, head_fn=model.head_fn),
                               ablation_cam_loop(model, features, predicted), rtol=1e-4, atol=1e-6)


def test_make_all_maps_fn_ablation_equals_the_closed_form_of_a_gap_dense_head():
    # With logits = mean_hw(A) @ W + b, ablating channel k to 0 lowers the target logit y by
    # W[k, c] mean_hw(A_k): the weight is W[k, c] mean_hw(A_k) / y.
    model = create_model(get_config("tiny").model)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    targets = np.array([1, 0])
    got = maps.make_all_maps_fn(model, ("ablation_cam", "eigen_cam"), chunk=3)(variables, images, targets)
    logits, features = (np.asarray(a, np.float64) for a in jax.jit(model.apply)(variables, images))
    kernel = np.asarray(variables["params"]["head"]["dense"]["kernel"], np.float64)
    assert features.min() == 0
    want = np.zeros(features.shape[:3])
    for b, c in enumerate(targets):
        weights = kernel[:, c] * features[b].mean(axis=(0, 1)) / logits[b, c]
        want[b] = np.maximum(features[b] @ weights, 0)
    assert want.max() > 0
    np.testing.assert_allclose(got["ablation_cam"], want, rtol=1e-3, atol=1e-5 * want.max())
    np.testing.assert_allclose(got["eigen_cam"], eigen_cam_loop(features), rtol=1e-4, atol=1e-5)


def test_ablation_values_follow_the_sign_of_the_features():
    features = np.zeros((2, 2, 2, 3), np.float32)
    features[0] = np.abs(np.random.default_rng(0).normal(size=(2, 2, 3)))
    features[0, 0, 0, 0] = 0.0  # a ReLU map: minimum 0 -> ablate to 0
    features[1] = np.random.default_rng(1).normal(size=(2, 2, 3))  # signed -> min - 1e7
    np.testing.assert_allclose(maps.ablation_values(features), [0.0, features[1].min() - 1e7], rtol=1e-7)


def eigen_cam_loop(features):
    out = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):
        h, w, k = features[b].shape
        x = features[b].reshape(h * w, k).astype(np.float64)
        x = x - x.mean(axis=0)
        v = np.linalg.svd(x)[2][0]
        if v.sum() < 0:
            v = -v
        out[b] = np.maximum((x @ v).reshape(h, w), 0)
    return out


def test_eigen_cam_equals_a_per_image_svd_and_points_at_the_common_pattern():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    got = maps.eigen_cam_from_features(features)
    np.testing.assert_allclose(got, eigen_cam_loop(features), rtol=1e-4, atol=1e-5)
    # Features that fire together in a blob: the map is highest there (the sign convention).
    blob = np.zeros((1, 6, 6, 1), np.float32)
    blob[0, 1:3, 3:5] = 1.0
    fired = blob * rng.uniform(0.5, 1.5, size=(1, 1, 1, 8)) + 0.05 * rng.random((1, 6, 6, 8))
    m = np.asarray(maps.eigen_cam_from_features(fired.astype(np.float32)))[0]
    assert m[1:3, 3:5].min() > 0 and np.all(m[blob[0, :, :, 0] == 0] == 0)
    model = LinearModel(9, 3, 3, 4, 2, 2)
    images = random_images(6, 2, model)
    np.testing.assert_allclose(maps.eigen_cam(model.apply_fn, images), eigen_cam_loop(model.features_np(images)),
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("size", [(20, 20), (7, 9), (3, 2)])  # up, mixed, down
@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_equals_separable_np_interp(size, align_corners):
    maps_in = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    got = maps.upsample(maps_in, *size, align_corners=align_corners)
    want = np.stack([resize_loop(m, *size, align_corners=align_corners) for m in maps_in])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if size == (20, 20) and not align_corners:  # upsampling: the same as jax.image.resize
        ref = jax.image.resize(jnp.asarray(maps_in), (2, 20, 20), "bilinear")
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_normalize_and_postprocess():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    x[1] = 2.5  # a constant map
    for eps in (1e-7, 0.0):
        got = np.asarray(maps.normalize(x, eps))
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got[1], 0.0)
        np.testing.assert_allclose(got[0], minmax_loop(x[0], eps), rtol=1e-5, atol=1e-6)
        assert got[2].min() == 0.0 and abs(got[2].max() - 1.0) < 1e-5
    want = np.stack([minmax_loop(resize_loop(minmax_loop(np.maximum(m, 0), 1e-7), 16, 20), 1e-7) for m in x])
    np.testing.assert_allclose(maps.postprocess(x, 16, 20), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- all_maps, vmap, sharding


def test_all_maps_equals_the_individual_functions():
    model = LinearModel(5, 3, 3, 6, 2, 4)
    images = random_images(3, 4, model)
    fn = jax.jit(maps.all_maps, static_argnames=("apply_fn", "methods", "chunk"))
    for targets in (np.array([1, 0, 1, 0]), None):
        out = fn(model.apply_fn, model.kernel, images, targets, methods=maps.CLASSIFIER_METHODS, chunk=4)
        assert set(out) == set(maps.CLASSIFIER_METHODS)
        assert set(fn(model.apply_fn, model.kernel, images, targets, chunk=4)) == set(maps.CAM_METHODS)  # the default
        chosen = np.argmax(model.logits_np(images), -1) if targets is None else targets
        individual = jax.jit(lambda x, t, chosen: {
            "cam": maps.cam(model.apply_fn(x)[1], model.kernel, chosen),
            "positive_cam": maps.positive_cam(model.apply_fn(x)[1], model.kernel, chosen),
            "grad_cam": maps.grad_cam(model.apply_fn, x, t),
            "grad_cam_pp": maps.grad_cam_pp(model.apply_fn, x, t),
            "layer_cam": maps.layer_cam(model.apply_fn, x, t),
            "score_cam": maps.score_cam(model.apply_fn, x, t, chunk=4),
            "hires_cam": maps.hires_cam(model.apply_fn, x, t),
            "xgrad_cam": maps.xgrad_cam(model.apply_fn, x, t),
            "ablation_cam": maps.ablation_cam(model.apply_fn, x, t, chunk=4),
            "eigen_cam": maps.eigen_cam(model.apply_fn, x, t),
            "integrated_gradients": pa.saliency_map(pa.integrated_gradients(
                pa.target_logit(lambda y: model.apply_fn(y)[0], chosen), x, 0.0, maps.registry.PIXEL_STEPS, 4)),
            "smoothgrad": pa.saliency_map(pa.smooth_grad(
                pa.target_logit(lambda y: model.apply_fn(y)[0], chosen), x, jax.random.key(0),
                maps.registry.PIXEL_STEPS, chunk=4)),
        })(images, targets, chosen)
        for name, want in individual.items():
            np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    only = fn(model.apply_fn, model.kernel, images, None, methods=("positive_cam",))
    assert set(only) == {"positive_cam"}


def test_vmap_over_a_leading_axis():
    model = LinearModel(6, 2, 3, 4, 2, 2)
    images = np.stack([random_images(i, 3, model) for i in range(2)])  # (G, B, H, W, 1)
    targets = np.array([[0, 1, 1], [1, 0, 0]])
    single = jax.jit(lambda x, t: maps.grad_cam_pp(model.apply_fn, x, t))
    batched = jax.jit(jax.vmap(single))(images, targets)
    for g in range(2):
        np.testing.assert_allclose(batched[g], single(images[g], targets[g]), rtol=1e-6)
    features = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 5)).astype(np.float32)
    weights = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    batched = jax.jit(jax.vmap(maps.positive_cam, in_axes=(0, None, 0)))(features, weights, targets)
    for g in range(2):
        np.testing.assert_allclose(batched[g], cam_loop(features[g], weights, targets[g], positive=True),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_batch_gives_the_unsharded_result(axis_type):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    model = LinearModel(7, 2, 2, 4, 2, 4)
    images = random_images(4, 8, model)
    targets = np.arange(8) % 2
    fn = jax.jit(lambda x, t: maps.all_maps(model.apply_fn, model.kernel, x, t, chunk=2))
    plain = fn(images, targets)
    batch = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        sharded = fn(jax.device_put(images, batch), jax.device_put(targets, batch))
    for name in maps.CAM_METHODS:
        assert sharded[name].sharding.spec[0] == "data", name
        np.testing.assert_allclose(sharded[name], plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
