"""pcam_jax.trust.faithfulness and pcam_jax.trust.imputation against numpy loops, a dense solve and hand cases.

The model is a logistic regression on the pixels, ``p(x) = sigmoid(sum(w * x) + b)``: the
evidence each pixel carries relative to a baseline is known exactly, ``w * (x - baseline)``,
so the most faithful ranking is known.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pcam_jax.trust import faithfulness as fa
from pcam_jax.trust import imputation

pytestmark = pytest.mark.usefixtures("fast_compilation")


class Logistic:
    def __init__(self, seed, h, w, c=1):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(h, w, c)).astype(np.float32)
        self.b = np.float32(0.3)

    def prob_fn(self, x):
        return jax.nn.sigmoid(jnp.einsum("bhwc,hwc->b", x, self.w, precision="highest") + self.b)

    def prob_np(self, x):
        return 1.0 / (1.0 + np.exp(-(np.einsum("bhwc,hwc->b", np.asarray(x, np.float64), self.w) + self.b)))


def images_for(seed, b, h, w, c=1):
    return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


# ----------------------------------------------------------------------------- references


def ranks_loop(saliency):
    out = np.zeros(saliency.shape, int)
    for b, s in enumerate(saliency):
        flat = s.ravel()
        # highest first, ties in raster order
        order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
        out[b].ravel()[order] = np.arange(flat.size)
    return out


def curve_loop(prob_np, images, saliency, baseline, num_steps, insertion):
    b_, h, w, _ = images.shape
    ranks = ranks_loop(saliency)
    curve = np.zeros((b_, num_steps + 1))
    for b in range(b_):
        for i in range(num_steps + 1):
            n = (i * h * w) // num_steps
            x = (baseline[b] if insertion else images[b]).copy()
            for r in range(h):
                for c in range(w):
                    if ranks[b, r, c] < n:
                        x[r, c] = images[b, r, c] if insertion else baseline[b, r, c]
            curve[b, i] = prob_np(x[None])[0]
    return curve


def dense_imputation(image, removed):
    """ROAD's system written out densely (one channel) and solved with np.linalg.solve."""
    h, w = removed.shape
    unknown = [(r, c) for r in range(h) for c in range(w) if removed[r, c]]
    index = {p: k for k, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    rhs = np.zeros(len(unknown))
    for k, (r, c) in enumerate(unknown):
        for dr, dc, weight in imputation.NEIGHBOUR_WEIGHTS:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h and 0 <= cc < w):
                continue
            a[k, k] += weight
            if removed[rr, cc]:
                a[k, index[(rr, cc)]] -= weight
            else:
                rhs[k] += weight * image[rr, cc]
    out = np.array(image, np.float64)
    for (r, c), v in zip(unknown, np.linalg.solve(a, rhs)):
        out[r, c] = v
    return out


def blur_loop(image, sigma, radius):
    h, w = image.shape
    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            total = norm = 0.0
            for rr in range(max(0, r - radius), min(h, r + radius + 1)):
                for cc in range(max(0, c - radius), min(w, c + radius + 1)):
                    k = np.exp(-0.5 * ((rr - r) / sigma) ** 2) * np.exp(-0.5 * ((cc - c) / sigma) ** 2)
                    total, norm = total + k * image[rr, cc], norm + k
            out[r, c] = total / norm
    return out


# ----------------------------------------------------------------------------- ranks, baselines, AUC


def test_pixel_ranks_equal_a_sort_loop_with_raster_ties():
    rng = np.random.default_rng(0)
    saliency = rng.integers(0, 4, size=(3, 4, 5)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(fa.pixel_ranks(saliency), ranks_loop(saliency))
    assert np.asarray(fa.pixel_ranks(np.zeros((1, 2, 3))))[0].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_blurred_baseline_equals_a_renormalised_gaussian_loop():
    images = images_for(1, 2, 7, 9, 2)
    got = fa.blurred_baseline(images, sigma=1.5, radius=2)
    for b in range(2):
        for c in range(2):
            np.testing.assert_allclose(got[b, :, :, c], blur_loop(images[b, :, :, c], 1.5, 2), rtol=1e-5, atol=1e-6)
    constant = np.full((1, 6, 6, 1), 0.7, np.float32)  # renormalised: no dark border
    np.testing.assert_allclose(fa.blurred_baseline(constant), constant, rtol=1e-6)


def test_area_under_curve_is_the_trapezoid_rule():
    curve = np.random.default_rng(2).random((3, 11))
    np.testing.assert_allclose(fa.area_under_curve(curve), np.trapezoid(curve, np.linspace(0, 1, 11), axis=-1),
                               rtol=1e-6)
    np.testing.assert_allclose(fa.area_under_curve(np.array([1.0, 0.0])), 0.5)


# ----------------------------------------------------------------------------- deletion / insertion


@pytest.mark.parametrize("num_steps,chunk", [(4, 1), (7, 3), (5, 64)])  # 7 steps: 8 points, padded to 9
def test_curves_equal_a_numpy_loop(num_steps, chunk):
    model = Logistic(0, 5, 6)
    images = images_for(3, 3, 5, 6)
    saliency = np.random.default_rng(4).random((3, 5, 6)).astype(np.float32)
    blurred = np.asarray(fa.blurred_baseline(images, 1.0, 1))
    for insertion, baseline, base_np in [(False, 0.25, np.full_like(images, 0.25)), (True, blurred, blurred)]:
        fn = fa.insertion_curve if insertion else fa.deletion_curve
        got = jax.jit(fn, static_argnums=0, static_argnames=("num_steps", "chunk"))(
            model.prob_fn, images, saliency, baseline, num_steps=num_steps, chunk=chunk)
        want = curve_loop(model.prob_np, images, saliency, base_np, num_steps, insertion)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        ends = (base_np, images) if insertion else (images, base_np)
        np.testing.assert_allclose(got[:, 0], model.prob_np(ends[0]), rtol=1e-5)
        np.testing.assert_allclose(got[:, -1], model.prob_np(ends[1]), rtol=1e-5)


@pytest.mark.parametrize("blur", [False, True])
def test_the_true_evidence_order_has_the_best_deletion_and_insertion_auc(blur):
    h = w = 8
    model = Logistic(5, h, w)
    images = images_for(6, 4, h, w)
    baseline = np.asarray(fa.blurred_baseline(images, 2.0, 3)) if blur else np.zeros_like(images)
    evidence = (model.w * (images - baseline))[..., 0]  # exact contribution of each pixel to the logit
    rng = np.random.default_rng(7)
    orders = {"evidence": evidence, "reversed": -evidence,
              **{f"random{i}": rng.random(evidence.shape).astype(np.float32) for i in range(5)}}
    kw = dict(num_steps=16, chunk=4)
    deletion = {k: np.asarray(fa.area_under_curve(fa.deletion_curve(model.prob_fn, images, s, baseline, **kw)))
                for k, s in orders.items()}
    insertion = {k: np.asarray(fa.area_under_curve(fa.insertion_curve(model.prob_fn, images, s, baseline, **kw)))
                 for k, s in orders.items()}
    for other in orders:
        if other != "evidence":
            assert (deletion["evidence"] < deletion[other]).all(), other
            assert (insertion["evidence"] > insertion[other]).all(), other
    # Deleting the largest contributions first is the pointwise lowest curve (a hand argument:
    # the logit after k deletions is the logit minus the sum of the k deleted contributions).
    curve = np.asarray(fa.deletion_curve(model.prob_fn, images, evidence, baseline, **kw))
    for k in ("reversed", "random0"):
        assert (curve <= np.asarray(fa.deletion_curve(model.prob_fn, images, orders[k], baseline, **kw)) + 1e-6).all()


# ----------------------------------------------------------------------------- imputation and ROAD


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_imputation_equals_a_dense_solve(seed):
    rng = np.random.default_rng(seed)
    h, w = 6, 7
    images = rng.random((2, h, w, 2)).astype(np.float32)
    removed = rng.random((2, h, w)) < 0.6
    removed[0, :3, :] = True  # a hole touching the border
    removed[1] = False
    removed[1, 2:5, 1:6] = True  # an interior hole
    got = np.asarray(jax.jit(imputation.linear_imputation, static_argnums=2)(images, removed, h * w + 10))
    for b in range(2):
        for c in range(2):
            want = dense_imputation(images[b, :, :, c], removed[b])
            np.testing.assert_allclose(got[b, :, :, c], want, rtol=1e-4, atol=1e-5)
    kept = ~removed[..., None].repeat(2, -1)
    np.testing.assert_array_equal(got[kept], images[kept])


def test_noise_is_added_to_the_removed_pixels_only():
    images = images_for(2, 2, 8, 8)
    removed = np.zeros((2, 8, 8), bool)
    removed[:, 2:6, 3:7] = True
    key = jax.random.key(3)
    plain = np.asarray(imputation.linear_imputation(images, removed, 40))
    noisy = np.asarray(imputation.noisy_linear_imputation(images, removed, key, 0.05, 40))
    draw = 0.05 * np.asarray(jax.random.normal(key, images.shape))
    np.testing.assert_allclose(noisy - plain, np.where(removed[..., None], draw, 0.0), atol=1e-6)


def test_cg_from_the_pyramid_start_reaches_the_noise_level_on_a_large_hole():
    # 32x32, the top 90% of a smooth map removed: the default iteration count is ample.
    size = 32
    yy, xx = np.mgrid[:size, :size] / size
    saliency = np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.1)[None].astype(np.float32)
    images = (0.5 + 0.3 * np.sin(6 * xx) * yy + 0.05 * np.random.default_rng(0).random((size, size)))
    images = images[None, :, :, None].astype(np.float32)
    removed = np.asarray(fa.road_removal_masks(saliency, (0.9,)))[0]
    got = np.asarray(imputation.linear_imputation(images, removed))[0, :, :, 0]
    want = dense_imputation(images[0, :, :, 0], removed[0])
    assert np.abs(got - want).max() < 1e-3


def test_road_masks_remove_the_right_number_of_most_and_least_relevant_pixels():
    saliency = np.random.default_rng(0).random((2, 5, 4)).astype(np.float32)
    for mrf in (True, False):
        masks = np.asarray(fa.road_removal_masks(saliency, (0.1, 0.5, 0.9), mrf))
        for p, frac in enumerate((0.1, 0.5, 0.9)):
            n = round(frac * 20)
            for b in range(2):
                assert masks[p, b].sum() == n
                chosen, others = saliency[b][masks[p, b]], saliency[b][~masks[p, b]]
                assert (chosen.min() > others.max()) if mrf else (chosen.max() < others.min())


def test_road_equals_a_loop_over_fractions_with_a_dense_solve():
    chunk = 2  # 3 fractions padded to 4
    model = Logistic(8, 5, 5)
    images = images_for(9, 2, 5, 5)
    saliency = np.random.default_rng(10).random((2, 5, 5)).astype(np.float32)
    fractions = (0.2, 0.4, 0.8)
    road = jax.jit(fa.road_curve, static_argnums=(0, 4, 5), static_argnames=("noise", "num_iterations", "chunk"))
    for mrf in (True, False):
        got = road(model.prob_fn, images, saliency, jax.random.key(0), fractions, mrf, noise=0.0,
                   num_iterations=30, chunk=chunk)
        masks = np.asarray(fa.road_removal_masks(saliency, fractions, mrf))
        want = np.zeros((2, 3))
        for p in range(3):
            filled = np.stack([dense_imputation(images[b, :, :, 0], masks[p, b]) for b in range(2)])[..., None]
            want[:, p] = model.prob_np(filled)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # with noise: one independent draw per fraction, reproducible from the key
    a = road(model.prob_fn, images, saliency, jax.random.key(1), fractions, True, chunk=chunk)
    b = road(model.prob_fn, images, saliency, jax.random.key(1), fractions, True, chunk=3)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_road_combined_and_confidence_change_by_hand():
    morf = np.array([[0.1, 0.3], [0.5, 0.5]])
    lerf = np.array([[0.9, 0.7], [0.5, 0.7]])
    np.testing.assert_allclose(fa.road_combined(morf, lerf), [0.3, 0.05], rtol=1e-6)
    # p = x[0, 0] (a one-pixel "model"): masked by a map of 0.5 -> half, of 2 -> twice
    prob_fn = lambda x: x[:, 0, 0, 0]  # noqa: E731
    images = np.array([0.8, 0.4, 0.0]).reshape(3, 1, 1, 1).astype(np.float32)
    saliency = np.array([0.5, 1.5, 1.0]).reshape(3, 1, 1).astype(np.float32)
    out = fa.confidence_change(prob_fn, images, saliency)
    np.testing.assert_allclose(out["masked_probability"], [0.4, 0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["drop"], [0.5, 0.0, 0.0], rtol=1e-5)
    np.testing.assert_array_equal(out["increase"], [0.0, 1.0, 0.0])


def test_target_probability_selects_the_target_column():
    logits = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)
    prob = fa.target_probability(lambda x: x, np.array([1, 1]))(logits)
    np.testing.assert_allclose(prob, jax.nn.softmax(logits)[:, 1], rtol=1e-6)


def test_bad_inputs_are_clear_errors():
    model = Logistic(0, 4, 4)
    images = images_for(0, 2, 4, 4)
    with pytest.raises(fa.FaithfulnessInputError, match="postprocess"):
        fa.deletion_curve(model.prob_fn, images, np.zeros((2, 2, 2)))
    with pytest.raises(fa.FaithfulnessInputError, match="baseline"):
        fa.deletion_curve(model.prob_fn, images, np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(fa.FaithfulnessInputError, match="fractions"):
        fa.road_curve(model.prob_fn, images, np.zeros((2, 4, 4)), jax.random.key(0), (0.5, 1.0))
    with pytest.raises(fa.FaithfulnessInputError, match="chunk"):
        fa.deletion_curve(model.prob_fn, images, np.zeros((2, 4, 4)), chunk=0)


def test_a_flax_model_enters_through_target_probability():
    # The tiny PCAMNet, steps vmapped through its custom convolutions, against one call per step.
    from pcam_jax.configs import get_config
    from pcam_jax.models import create_model

    model = create_model(get_config("tiny").model)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    saliency = jax.random.uniform(jax.random.key(2), (2, 32, 32))
    targets = jnp.array([1, 0])
    prob_fn = fa.target_probability(lambda x: model.apply(variables, x)[0], targets)
    got = jax.jit(lambda x, s: fa.deletion_curve(prob_fn, x, s, 0.0, num_steps=3, chunk=2))(images, saliency)
    ranks = np.asarray(fa.pixel_ranks(saliency))[..., None]
    deleted = np.stack([np.where(ranks < (i * 32 * 32) // 3, 0.0, np.asarray(images)) for i in range(4)])
    want = jax.jit(jax.lax.map, static_argnums=0)(prob_fn, jnp.asarray(deleted))  # one call per step
    np.testing.assert_allclose(got, np.asarray(want).T, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_batch_gives_the_unsharded_result(axis_type):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    model = Logistic(11, 6, 6)
    images = images_for(12, 8, 6, 6)
    saliency = np.random.default_rng(13).random((8, 6, 6)).astype(np.float32)

    @jax.jit
    def run(x, s):
        return {"deletion": fa.deletion_curve(model.prob_fn, x, s, num_steps=6, chunk=4),
                "insertion": fa.insertion_curve(model.prob_fn, x, s, num_steps=6, chunk=4),
                "morf": fa.road_curve(model.prob_fn, x, s, jax.random.key(0), (0.3, 0.6), chunk=2,
                                      num_iterations=30),
                "drop": fa.confidence_change(model.prob_fn, x, s)["drop"]}

    plain = run(images, saliency)
    batch = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        sharded = run(jax.device_put(images, batch), jax.device_put(saliency, batch))
    for name in plain:
        assert sharded[name].sharding.spec[0] == "data", name
        np.testing.assert_allclose(sharded[name], plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
