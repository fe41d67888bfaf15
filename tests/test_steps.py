"""The train steps of the three stages on the tiny config (32x32 images)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax import configs, models
from pcam_jax.data import DEVICE_KEYS
from pcam_jax.training import losses, steps
from pcam_jax.training.state import (carry_over, create_train_state, make_optimizer,
                                     update_accuracy_ema)
from tests.fake_batches import fake_batch


def device_batch(batch):
    return {k: jnp.asarray(batch[k]) for k in DEVICE_KEYS}


@pytest.fixture(scope="module")
def setup():
    config = configs.get_config("tiny")
    model = models.create_model(config.model)
    # jitted (and so in the persistent compilation cache): eager Flax init is slow
    state = jax.jit(lambda key: create_train_state(config, model, key))(jax.random.key(0))
    return config, model, state


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_optimizer_state_structure_is_the_same_in_every_stage(setup):
    config, _, state = setup
    for frozen in ((), ("decoder",)):
        for name, wd in (("adam", 0.0), ("adam", 0.1), ("adamw", 0.1)):
            c = configs.get_config("tiny")
            c.optimizer.name, c.optimizer.weight_decay = name, wd
            s = make_optimizer(c, frozen_parts=frozen).init(state["params"])
            assert jax.tree.structure(s) == jax.tree.structure(make_optimizer(c).init(state["params"]))
    assert jax.tree.structure(state["opt_state"]) == jax.tree.structure(
        make_optimizer(config, frozen_parts=("decoder",)).init(state["params"]))
    c = configs.get_config("tiny")
    c.optimizer.name = "sgd"
    with pytest.raises(ValueError, match="optimizer.name"):
        make_optimizer(c)


def test_stage1_step_learns_and_leaves_decoder_untouched(setup):
    config, model, state = setup
    config = configs.get_config("tiny")
    config.stage1.class_weighted, config.stage1.abnormal_fraction = True, 0.25
    step = jax.jit(steps.make_train_step(1, config, model))
    batch = device_batch(fake_batch(8))
    s, history = state, []
    for _ in range(6):
        s, metrics = step(s, batch)
        history.append({k: float(v) for k, v in metrics.items()})
    first, last = history[0], history[-1]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert first["nonfinite"] == 0.0 and first["l2"] == 0.0 and first["l3"] == 0.0
    assert "decoder_max" not in first   # no decoder is trained: nothing for the dead-decoder guard
    assert last["loss"] < first["loss"]  # six Adam steps on one batch fit it better
    # loss of the first step = class-weighted CE of the plain pass at the initial params
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, batch["image"])
    p = np.asarray(jax.nn.softmax(logits))
    nll = -np.log(p[np.arange(8), np.asarray(batch["label"])])
    weights = np.where(np.asarray(batch["label"]) == 1, 0.5 / 0.25, 0.5 / 0.75)
    np.testing.assert_allclose(first["loss"], np.mean(weights * nll), rtol=1e-5)
    assert int(s["step"]) == 6
    assert _tree_equal(s["params"]["decoder"], state["params"]["decoder"])
    assert not _tree_equal(s["params"]["encoder"], state["params"]["encoder"])


def test_stage2_step_with_weight_decay_and_lambda(setup):
    _, model, _ = setup
    config = configs.get_config("tiny")
    config.optimizer.name, config.optimizer.weight_decay = "adamw", 0.1  # would shrink an unfrozen decoder
    state = create_train_state(config, model, jax.random.key(0))
    step = jax.jit(steps.make_train_step(2, config, model))
    batch = device_batch(fake_batch(8, valid_rows=7))
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, device_batch(fake_batch(8, seed=1)))
    m1 = {k: float(v) for k, v in m1.items()}
    assert all(math.isfinite(v) for v in m1.values()) and m1["nonfinite"] == 0.0
    # lambda = exp(P - 1) with P the bias-corrected EMA: after one batch, P = its accuracy
    np.testing.assert_allclose(m1["accuracy_ema"], m1["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(m1["confidence"], math.exp(m1["accuracy"] - 1), rtol=1e-6)
    np.testing.assert_allclose(m1["loss"], (1 - m1["confidence"]) * m1["l1"] + m1["confidence"] * m1["l2"],
                               rtol=1e-5)
    assert m1["l2"] > 0.0
    # second batch: m_2 = m_1 + (1 - d) / (1 - d^2) (a_2 - m_1) = m_1 + (a_2 - m_1) / (1 + d)
    d = config.stage2.accuracy_ema
    np.testing.assert_allclose(float(m2["accuracy_ema"]),
                               m1["accuracy"] + (float(m2["accuracy"]) - m1["accuracy"]) / (1 + d), rtol=1e-5)
    np.testing.assert_allclose(float(s2["confidence"]["accuracy_ema"]), float(m2["accuracy_ema"]))
    assert _tree_equal(s2["params"]["decoder"], state["params"]["decoder"])
    assert not _tree_equal(s2["batch_stats"], state["batch_stats"])


def test_confidence_from_validation_accuracy(setup):
    _, model, state = setup
    config = configs.get_config("tiny")
    config.stage2.confidence = "validation"
    loss_fn = jax.jit(steps.make_loss_fn(2, config, model))
    s = dict(state, confidence={"accuracy_ema": jnp.float32(0.1), "val_accuracy": jnp.float32(0.8)})
    _, aux = loss_fn(state["params"], s, device_batch(fake_batch(8)))
    np.testing.assert_allclose(float(aux["metrics"]["confidence"]), math.exp(0.8 - 1), rtol=1e-6)


def test_update_accuracy_ema_closed_form():
    d, m = 0.9, jnp.float32(0.123)  # the starting value plays no part
    m = update_accuracy_ema(m, 0.5, jnp.int32(0), d)
    np.testing.assert_allclose(m, 0.5, rtol=1e-6)
    m = update_accuracy_ema(m, 1.0, jnp.int32(1), d)
    # debiased: ((1 - d) d * 0.5 + (1 - d) * 1.0) / (1 - d^2) = (0.045 + 0.1) / 0.19
    np.testing.assert_allclose(m, 0.145 / 0.19, rtol=1e-6)


def _l2_of_mask_params(model, config, state, batch, stop_mask):
    """L2 as a function of the encoder params that make the mask only; masked pass params fixed."""
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}

    def l2(mask_encoder):
        p = dict(state["params"], encoder=mask_encoder)
        (_, features), _ = model.apply({"params": p, "batch_stats": state["batch_stats"]}, batch["image"],
                                       train=True, mutable=["batch_stats"])
        _, mask = steps.attention_and_mask(features, p, (32, 32), config.stage2)
        if stop_mask:
            mask = jax.lax.stop_gradient(mask)
        logits = _masked_logits(model, variables, losses.masked_images(batch["image"], mask, "keep"),
                                config.stage2.masked_batch_norm)
        return losses.attention_loss(logits, batch["label"], "keep", True, batch["valid"])

    return jax.jit(jax.grad(l2))(state["params"]["encoder"])


def _masked_logits(model, variables, images, masked_batch_norm):
    """The masked pass as config.stage2.masked_batch_norm says: running or the batch's own statistics."""
    if masked_batch_norm == "batch":
        (logits, _), _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits
    return model.apply(variables, images, train=False)[0]


@pytest.mark.parametrize("masked_batch_norm", ["batch", "running"])
def test_stage2_encoder_gets_gradient_from_l2_through_the_mask(setup, monkeypatch, masked_batch_norm):
    _, model, state = setup
    config = configs.get_config("tiny")
    config.stage2.masked_batch_norm = masked_batch_norm
    batch = device_batch(fake_batch(8))
    # (a) The mask path alone: L2 as a function of the encoder params that produce T(A), the
    # masked pass held fixed. Nonzero; exactly zero once the mask is stop-gradiented.
    through_mask = _l2_of_mask_params(model, config, state, batch, stop_mask=False)
    stopped = _l2_of_mask_params(model, config, state, batch, stop_mask=True)
    assert optax_norm(through_mask) > 1e-6
    assert optax_norm(stopped) == 0.0
    # (b) The real loss function keeps that path: its encoder gradient of L2 changes by the
    # mask-path gradient when soft_mask is replaced by a stop-gradient copy.
    loss_fn = steps.make_loss_fn(2, config, model)
    grad_l2 = lambda: jax.jit(jax.grad(lambda p: loss_fn(p, state, batch)[1]["metrics"]["l2"]))(
        state["params"])["encoder"]
    full = grad_l2()
    soft_mask = losses.soft_mask
    monkeypatch.setattr(losses, "soft_mask", lambda a, o, s: jax.lax.stop_gradient(soft_mask(a, o, s)))
    cut = grad_l2()
    difference = jax.tree.map(lambda a, b: a - b, full, cut)
    np.testing.assert_allclose(optax_norm(difference), optax_norm(through_mask), rtol=1e-3)
    assert _tree_max_diff(difference, through_mask) < 1e-3 * optax_norm(through_mask)


def optax_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


@pytest.mark.parametrize("masked_batch_norm", ["batch", "running"])
def test_masked_pass_does_not_update_batch_stats_and_modes_differ(setup, masked_batch_norm):
    _, model, state = setup
    batch = device_batch(fake_batch(8))
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    (_, features), plain_only = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    _, mask = steps.attention_and_mask(features, state["params"], (32, 32), configs.get_config("tiny").stage2)
    abnormal = np.asarray(batch["label"]) == 1
    l2 = {}
    for mode in ("keep", "erase"):
        config = configs.get_config("tiny")
        config.stage2.mask_mode = mode
        config.stage2.masked_batch_norm = masked_batch_norm
        _, aux = jax.jit(steps.make_loss_fn(2, config, model))(state["params"], state, batch)
        # batch_stats after the step's passes = after the plain pass alone: the masked pass adds no update
        assert _tree_max_diff(aux["batch_stats"], plain_only["batch_stats"]) < 1e-6
        l2[mode] = float(aux["metrics"]["l2"])
    # independent L2 of each mode from the masked images, normalised as configured
    keep_logits = _masked_logits(model, variables, batch["image"] * mask[..., None], masked_batch_norm)
    erase_logits = _masked_logits(model, variables, batch["image"] * (1.0 - mask[..., None]), masked_batch_norm)
    keep_p = np.asarray(jax.nn.softmax(keep_logits))[abnormal]
    erase_p = np.asarray(jax.nn.softmax(erase_logits))[abnormal]
    np.testing.assert_allclose(l2["keep"], np.mean(-np.log(keep_p[:, 1])), rtol=1e-4)
    np.testing.assert_allclose(l2["erase"], np.mean(erase_p[:, 1]), rtol=1e-4)
    assert abs(l2["keep"] - l2["erase"]) > 1e-3


def test_stage3_step_from_stage2_trains_the_decoder(setup):
    config, model, state = setup
    fresh = models.init_variables(model, jax.random.key(1), 32)
    previous = {"params": state["params"], "batch_stats": state["batch_stats"]}
    variables = carry_over(previous, fresh)
    assert _tree_equal(variables["params"]["encoder"], state["params"]["encoder"])
    assert _tree_equal(variables["params"]["head"], state["params"]["head"])
    assert _tree_equal(variables["params"]["decoder"], fresh["params"]["decoder"])
    s0 = create_train_state(config, model, jax.random.key(2), init_params=variables)
    step = jax.jit(steps.make_train_step(3, config, model))
    labelled = fake_batch(4, seed=3)
    labelled["label"][:] = 1
    labelled["has_mask"][:] = True
    s1, m = step(s0, device_batch(fake_batch(8)), device_batch(labelled))
    m = {k: float(v) for k, v in m.items()}
    assert all(math.isfinite(v) for v in m.values()) and m["nonfinite"] == 0.0
    assert m["l3"] > 0.0
    np.testing.assert_allclose(m["loss"], (1 - m["confidence"]) * m["l1"] + m["confidence"] * m["l2"]
                               + config.stage3.l3_weight * m["l3"], rtol=1e-5)
    # L3 at the initial params = MSE of the decoder's training-mode map against the masks
    pred, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, method=models.PCAMNet.segment,
                                               mutable=["batch_stats"]))(variables, jnp.asarray(labelled["image"]))
    np.testing.assert_allclose(m["l3"], np.mean((np.asarray(pred) - labelled["mask"]) ** 2), rtol=1e-4)
    np.testing.assert_allclose(m["decoder_max"], np.max(np.asarray(pred)), rtol=1e-5)   # guards.DeadDecoderGuard's input
    labelled["has_mask"][:2] = False                                  # rows without a mask do not count
    _, m = step(s0, device_batch(fake_batch(8)), device_batch(labelled))
    np.testing.assert_allclose(float(m["decoder_max"]), np.max(np.asarray(pred)[2:]), rtol=1e-5)
    assert not _tree_equal(s1["params"]["decoder"], s0["params"]["decoder"])
    with pytest.raises(ValueError, match="labelled_batch"):
        steps.make_train_step(3, config, model)(s0, device_batch(fake_batch(8)))


def test_stage4_segmenter_learns_from_the_labelled_few_alone(setup):
    config, model, state = setup
    step = jax.jit(steps.make_train_step(4, config, model))
    labelled = fake_batch(4, seed=3)
    labelled["label"][:] = 1
    labelled["has_mask"][:] = True
    s1, m = step(state, device_batch(fake_batch(8)), device_batch(labelled))
    m = {k: float(v) for k, v in m.items()}
    assert m["l3"] > 0.0 and m["nonfinite"] == 0.0
    np.testing.assert_allclose(m["loss"], config.stage3.l3_weight * m["l3"], rtol=1e-6)  # L3 alone
    assert _tree_equal(s1["params"]["head"], state["params"]["head"])              # the head is frozen
    assert not _tree_equal(s1["params"]["decoder"], state["params"]["decoder"])
    assert not _tree_equal(s1["params"]["encoder"], state["params"]["encoder"])    # L3 trains the encoder


def test_init_params_of_another_network_is_a_clear_error(setup):
    config, model, state = setup
    other = configs.get_config("tiny")
    other.model.widths = (4, 16)
    other_model = models.create_model(other.model)
    wrong = jax.eval_shape(lambda: models.init_variables(other_model, jax.random.key(0), 32))
    with pytest.raises(ValueError, match="shape"):
        create_train_state(config, model, jax.random.key(0), init_params=wrong)


def test_eval_step(setup):
    _, model, state = setup
    batch = device_batch(fake_batch(8))
    out = steps.make_eval_step(model)(state, batch)
    logits, _ = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, batch["image"])
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-6)
    np.testing.assert_allclose(out["probs"], 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1])), rtol=1e-5)
    _, features = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, batch["image"])
    attention, mask = steps.attention_and_mask(features, state["params"], (32, 32), configs.get_config("tiny").stage2)
    assert attention.shape == mask.shape == (8, 32, 32)
    assert float(attention.min()) >= 0.0 and float(attention.max()) <= 1.0


def test_stage3_step_with_balanced_mse_matches_numpy(setup):
    """config.stage3.lesion_loss="balanced_mse" (the demo's) reaches L3 through the train step:
    per image the mean of the squared error inside and outside the lesion, background alone for
    an image with an empty mask, computed here by a numpy loop over images."""
    config, model, state = setup
    config = config.copy_and_resolve_references()
    config.stage3.lesion_loss = "balanced_mse"
    fresh = models.init_variables(model, jax.random.key(1), 32)
    variables = carry_over({"params": state["params"], "batch_stats": state["batch_stats"]}, fresh)
    s0 = create_train_state(config, model, jax.random.key(2), init_params=variables)
    labelled = fake_batch(4, seed=5)
    labelled["label"][:] = 1
    labelled["has_mask"][:] = True
    labelled["mask"][0] = 0.0            # an image whose mask is empty: background term alone
    labelled["valid"][3] = False         # a padding row: counts in no loss
    _, m = jax.jit(steps.make_train_step(3, config, model))(s0, device_batch(fake_batch(8)),
                                                            device_batch(labelled))
    pred, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, method=models.PCAMNet.segment,
                                               mutable=["batch_stats"]))(variables, jnp.asarray(labelled["image"]))
    pred = np.asarray(pred, np.float64)
    per_image = []
    for i in range(3):                    # the valid rows
        error, inside = (pred[i] - labelled["mask"][i]) ** 2, labelled["mask"][i] > 0.5
        background = error[~inside].mean()
        per_image.append(0.5 * (error[inside].mean() + background) if inside.any() else background)
    np.testing.assert_allclose(float(m["l3"]), np.mean(per_image), rtol=1e-4)
    # and it is not the plain MSE on these images (the option does change the loss)
    plain = np.mean([((pred[i] - labelled["mask"][i]) ** 2).mean() for i in range(3)])
    assert abs(plain - np.mean(per_image)) > 1e-3


def test_cosine_schedule_closed_form_and_first_adam_update(setup):
    """optimizer.schedule="cosine": lr(t) = lr0 * (1 + cos(pi * t / T)) / 2 after the warm-up, and
    Adam's first update (|m / sqrt(v)| = 1 per element) is exactly -lr(0) * sign(grad)."""
    from pcam_jax.training.state import learning_rate_schedule

    config, _, state = setup
    c = config.copy_and_resolve_references()
    c.optimizer.schedule, c.optimizer.learning_rate, c.optimizer.warmup_steps = "cosine", 2e-3, 0
    schedule = learning_rate_schedule(c.optimizer, 40)
    for t in (0, 7, 20, 33, 40):
        assert math.isclose(float(schedule(t)), 2e-3 * (1 + math.cos(math.pi * t / 40)) / 2, rel_tol=1e-5, abs_tol=1e-9)
    c.optimizer.warmup_steps = 10   # linear from 0 to lr0 over 10 steps, then the half cosine over the other 30
    schedule = learning_rate_schedule(c.optimizer, 40)
    assert math.isclose(float(schedule(5)), 1e-3, rel_tol=1e-5)
    assert math.isclose(float(schedule(25)), 2e-3 * (1 + math.cos(math.pi * 15 / 30)) / 2, rel_tol=1e-5)
    c.optimizer.warmup_steps = 0
    params = {"w": jnp.array([0.5, -1.0, 2.0])}
    grads = {"w": jnp.array([0.3, -0.2, 0.0001])}
    tx = make_optimizer(c, total_steps=40)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's epsilon (1e-8) against |g| shows only in the smallest gradient
    np.testing.assert_allclose(np.asarray(updates["w"]), -2e-3 * np.sign(np.asarray(grads["w"])), rtol=1e-3)
    with pytest.raises(ValueError, match="needs the stage's step count"):
        make_optimizer(c)
    c.optimizer.schedule = "linear"
    with pytest.raises(ValueError, match="must be one of"):
        make_optimizer(c, total_steps=40)


def test_cosine_state_has_the_constant_schedules_structure(setup):
    config, model, state = setup
    c = config.copy_and_resolve_references()
    c.optimizer.schedule = "cosine"
    cosine = jax.jit(lambda key: create_train_state(c, model, key))(jax.random.key(0))
    assert jax.tree.structure(cosine["opt_state"]) == jax.tree.structure(state["opt_state"])
    step = jax.jit(steps.make_train_step(1, c, model, total_steps=5))
    new, metrics = step(cosine, device_batch(fake_batch(8)))
    assert int(new["step"]) == 1 and np.isfinite(float(metrics["loss"]))
