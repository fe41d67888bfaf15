"""Sanity checks: Spearman against scipy, SSIM against a window loop, the cascade on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from pcam_jax import maps, models
from pcam_jax.trust import sanity
from pcam_jax.configs import get_config
from pcam_jax.evaluation import figures

from fake_batches import fake_batch

pytestmark = pytest.mark.usefixtures("fast_compilation")


def _ssim_loop(a, b, window=11, sigma=1.5, data_range=1.0):
    """Mean SSIM of two 2-D maps, one Gaussian-weighted window at a time (Wang et al. 2004)."""
    offsets = np.arange(window) - (window - 1) / 2
    g = np.exp(-offsets**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for y in range(a.shape[0] - window + 1):
        for x in range(a.shape[1] - window + 1):
            pa, pb = a[y:y + window, x:x + window], b[y:y + window, x:x + window]
            mu_a, mu_b = (w * pa).sum(), (w * pb).sum()
            var_a, var_b = (w * (pa - mu_a) ** 2).sum(), (w * (pb - mu_b) ** 2).sum()
            cov = (w * (pa - mu_a) * (pb - mu_b)).sum()
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_spearman_equals_scipy_with_ties_and_nan_for_constant_maps():
    rng = np.random.default_rng(0)
    a = rng.random((5, 12, 13))
    b = 0.5 * a + 0.5 * rng.random((5, 12, 13))
    a[:2] = np.round(a[:2] * 4) / 4  # many ties
    b[3] = -a[3]
    ours = np.asarray(sanity.spearman(jnp.asarray(a), jnp.asarray(b)))
    expected = [scipy.stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ours[3] == pytest.approx(-1.0, abs=1e-6)
    constant = np.asarray(sanity.spearman(jnp.zeros((1, 12, 13)), jnp.asarray(b[:1])))
    assert np.isnan(constant[0])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        sanity.spearman(jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 5)))


def test_ssim_equals_a_window_loop():
    rng = np.random.default_rng(1)
    a = rng.random((3, 16, 14))
    b = np.clip(a + 0.3 * rng.standard_normal((3, 16, 14)), 0, 1)
    b[2] = 1.0 - a[2]
    ours = np.asarray(sanity.ssim(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(ours, [_ssim_loop(x, y) for x, y in zip(a, b)], atol=2e-5)
    np.testing.assert_allclose(np.asarray(sanity.ssim(jnp.asarray(a), jnp.asarray(a))), 1.0, atol=1e-5)
    assert ours[2] < 0  # an inverted map is anti-correlated
    with pytest.raises(ValueError, match="at least 11x11"):
        sanity.ssim(jnp.zeros((1, 8, 8)), jnp.zeros((1, 8, 8)))


def test_similarity_broadcasts_over_steps():
    rng = np.random.default_rng(2)
    reference = jnp.asarray(rng.random((2, 12, 12)))
    stack = jnp.asarray(rng.random((3, 2, 12, 12)))
    scores = sanity.similarity(reference, stack)
    assert scores["ssim"].shape == (3, 2)
    np.testing.assert_allclose(scores["ssim"][1], sanity.ssim(reference, stack[1]), atol=1e-6)
    np.testing.assert_allclose(scores["abs_spearman"], np.abs(scores["spearman"]))


@pytest.fixture(scope="module")
def tiny():
    """The tiny network trained 40 steps on fake lesion images (abnormal = a bright square)."""
    config = get_config("tiny")
    model = models.create_model(config.model)
    init = jax.jit(lambda key: models.init_variables(model, key, 32))  # one compilation for both keys
    variables = init(jax.random.key(0))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(p):
            (logits, _), updates = model.apply({"params": p, "batch_stats": batch_stats}, images, train=True,
                                               mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), updates["batch_stats"], opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    for i in range(40):
        batch = fake_batch(16, seed=i)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, batch["image"], batch["label"])
    trained = {"params": params, "batch_stats": batch_stats}
    return model, trained, init(jax.random.key(1)), float(loss)


@pytest.fixture(scope="module")
def image_cascade(tiny):
    """The cascade of a "map" that is the image itself: it ignores the model."""
    _, trained, fresh, _ = tiny
    images = fake_batch(3, seed=100)["image"]
    return images, sanity.cascading_randomisation(lambda variables, x: {"image": x[..., 0]}, trained, fresh, images)


def test_randomisation_steps_and_cascade_variables(tiny):
    model, trained, fresh, _ = tiny
    steps = sanity.randomisation_steps(trained["params"])
    assert [name for name, _ in steps] == ["head", "stage2_block1", "stage1_block1", "stem"]
    assert steps[-1][1] == (("encoder", "stem_bn"), ("encoder", "stem_conv"))
    stacked = sanity.cascade_variables(trained, fresh, steps)
    head = stacked["params"]["head"]["dense"]["kernel"]
    block = stacked["params"]["encoder"]["stage1_block1"]["conv1"]["kernel"]
    stats = stacked["batch_stats"]["encoder"]["stage2_block1"]["bn1"]["mean"]
    assert head.shape[0] == block.shape[0] == 5
    np.testing.assert_array_equal(head[0], trained["params"]["head"]["dense"]["kernel"])
    for s in range(1, 5):
        np.testing.assert_array_equal(head[s], fresh["params"]["head"]["dense"]["kernel"])
    # stage1_block1 is the third step: trained at steps 0-2, fresh from step 3 on.
    for s in range(5):
        source = trained if s < 3 else fresh
        np.testing.assert_array_equal(block[s], source["params"]["encoder"]["stage1_block1"]["conv1"]["kernel"])
        source = trained if s < 2 else fresh
        np.testing.assert_array_equal(stats[s], source["batch_stats"]["encoder"]["stage2_block1"]["bn1"]["mean"])
    # The decoder is never randomised.
    np.testing.assert_array_equal(stacked["params"]["decoder"]["out"]["kernel"][-1],
                                  trained["params"]["decoder"]["out"]["kernel"])
    with pytest.raises(ValueError, match="no parameters under encoder/stage9_block1"):
        sanity.cascade_variables(trained, fresh, [("deep", (("encoder", "stage9_block1"),))])


def test_a_map_that_ignores_the_model_fails_the_cascade(image_cascade):
    _, result = image_cascade
    assert result["steps"] == ["original", "head", "stage2_block1", "stage1_block1", "stem"]
    assert result["maps"]["image"].shape == (5, 3, 32, 32)
    for metric in ("spearman", "abs_spearman", "ssim"):
        np.testing.assert_allclose(result[metric]["image"], 1.0, atol=1e-5)
    verdict = sanity.cascade_verdict(result)
    assert verdict["image"]["passes"] is False and verdict["image"]["final"] == pytest.approx(1.0, abs=1e-5)


def test_cam_of_a_trained_model_loses_similarity_as_layers_are_randomised(tiny):
    model, trained, fresh, loss = tiny
    assert loss < 0.3  # the model did learn the bright square
    batch = fake_batch(8, seed=200)
    maps_fn = maps.make_all_maps_fn(model, ("cam",))
    result = sanity.cascading_randomisation(maps_fn, trained, fresh, batch["image"], batch["label"])
    for metric in ("abs_spearman", "ssim"):
        mean = np.nanmean(result[metric]["cam"], axis=1)
        np.testing.assert_allclose(mean[0], 1.0, atol=1e-5)
        assert np.all(mean[1:] < 0.9), (metric, mean)
        assert mean[-1] < 0.5, (metric, mean)
    assert sanity.cascade_verdict(result)["cam"]["passes"]
    # The maps really are the network's: step 0 reproduces the trained model's CAM.
    direct = maps.postprocess(maps_fn(trained, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]))["cam"], 32, 32)
    np.testing.assert_allclose(result["maps"]["cam"][0], direct, atol=1e-5)


def test_random_logit_test(tiny):
    model, trained, _, _ = tiny
    batch = fake_batch(8, seed=300)
    key = jax.random.key(0)
    np.testing.assert_array_equal(sanity.other_classes(key, jnp.array([0, 1, 1]), 2), [1, 0, 0])
    many = np.asarray(sanity.other_classes(key, jnp.zeros(200, jnp.int32) + 2, 5))
    assert set(many.tolist()) == {0, 1, 3, 4}
    result = sanity.random_logit_test(maps.make_all_maps_fn(model, ("cam",)), trained, batch["image"],
                                      batch["label"], 2, key)
    np.testing.assert_array_equal(result["other_classes"], 1 - batch["label"])
    # With two classes and a trained head, the other class's CAM weights are close to the negated
    # target's: the other map is a different map, not the same one.
    assert np.nanmean(result["spearman"]["cam"]) < 0.5
    image_map = lambda variables, x, t: {"image": x[..., 0]}
    ignoring = sanity.random_logit_test(image_map, trained, batch["image"], batch["label"], 2, key)
    np.testing.assert_allclose(ignoring["ssim"]["image"], 1.0, atol=1e-5)


def test_cascade_figure(image_cascade, tmp_path):
    images, result = image_cascade
    fig = figures.cascade_figure(images, result["maps"]["image"], result["steps"], method="image",
                                 scores=result["ssim"]["image"])
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * (1 + 5)
    assert [ax.get_title() for ax in image_axes[:6]] == ["image", "original", "head", "stage2_block1",
                                                         "stage1_block1", "stem"]
    fig.savefig(tmp_path / "cascade.png", dpi=40)
    assert (tmp_path / "cascade.png").stat().st_size > 0
    with pytest.raises(ValueError, match="step names"):
        figures.cascade_figure(images, result["maps"]["image"], result["steps"][:2])
