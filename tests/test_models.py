import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.configs import get_config
from pcam_jax.models import NetworkSpec, PCAMNet, count_params, create_model, feature_shape, init_variables


def test_default_network_shapes_and_parameter_count():
    model = create_model(NetworkSpec())
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 320))
    params = variables["params"]
    assert set(params) == {"encoder", "head", "decoder"}
    assert set(variables["batch_stats"]) == {"encoder"}
    # The PyTorch twin in experiments/benchmarks/torch_twin has 793,330 parameters: encoder + head must match it.
    assert count_params(params["encoder"]) + count_params(params["head"]) == 793_330
    assert feature_shape(model, 320) == (1, 20, 20, 128)
    logits, features, lesion = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((2, 320, 320, 1)), method=PCAMNet.classify_and_segment), variables)
    assert logits.shape == (2, 2) and features.shape == (2, 20, 20, 128) and lesion.shape == (2, 320, 320)


def test_classifier_and_fcn_share_the_encoder():
    config = get_config("tiny")
    model = create_model(config.model)
    variables = init_variables(model, jax.random.key(0), 32)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    logits, _ = model.apply(variables, x)
    lesion = model.apply(variables, x, method=PCAMNet.segment)
    assert float(lesion.min()) >= 0.0 and float(lesion.max()) <= 1.0

    # Change one encoder leaf: both the classifier and the FCN output must change.
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    stem = params["encoder"]["stem_conv"]["kernel"]
    params["encoder"]["stem_conv"]["kernel"] = stem + 0.5
    changed = {"params": params, "batch_stats": variables["batch_stats"]}
    logits2, _ = model.apply(changed, x)
    lesion2 = model.apply(changed, x, method=PCAMNet.segment)
    assert not np.allclose(logits, logits2)
    assert not np.allclose(lesion, lesion2)


def test_feature_perturbation_is_added_before_the_head():
    config = get_config("tiny")
    model = create_model(config.model)
    variables = init_variables(model, jax.random.key(0), 32)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    _, features = model.apply(variables, x)
    delta = jnp.ones_like(features)
    logits, features_p = model.apply(variables, x, feature_perturbation=delta)
    w = variables["params"]["head"]["dense"]["kernel"]
    b = variables["params"]["head"]["dense"]["bias"]
    expected = (np.asarray(features) + 1.0).mean(axis=(1, 2)) @ np.asarray(w) + np.asarray(b)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features_p, features + 1.0, rtol=1e-6)


def test_bfloat16_is_mixed_precision_close_to_float32():
    # compute in bfloat16; parameters, gradients, BatchNorm statistics and the loss stay float32,
    # and agree with the float32 network's (the reference) to bfloat16's precision.
    from pcam_jax.training import state as state_lib, steps

    rng = np.random.default_rng(0)
    batch = {"image": rng.random((8, 32, 32, 1), dtype=np.float32), "label": np.arange(8) % 2,
             "mask": np.zeros((8, 32, 32), np.float32), "has_mask": np.zeros(8, bool), "valid": np.ones(8, bool)}
    out = {}
    for dtype in ("float32", "bfloat16"):
        config = get_config("tiny")
        config.model.dtype = dtype
        model = create_model(config.model)
        state = state_lib.create_train_state(config, model, jax.random.key(0))
        (loss, aux), grads = jax.value_and_grad(steps.make_loss_fn(1, config, model), has_aux=True)(
            state["params"], state, batch)
        leaves = jax.tree_util.tree_leaves((loss, grads, aux["batch_stats"], state["params"]))
        assert {leaf.dtype for leaf in leaves} == {np.dtype("float32")}, dtype
        out[dtype] = (loss, grads, aux["batch_stats"])
        features = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                               batch["image"], method=lambda m, x: m.encoder(x, False)[0])
        assert features.dtype == jnp.dtype(dtype)  # the encoder does compute in the chosen dtype
    (loss32, grads32, stats32), (loss16, grads16, stats16) = out["float32"], out["bfloat16"]
    assert abs(float(loss16) - float(loss32)) < 2e-2 * abs(float(loss32))
    # bfloat16 keeps ~3 significant digits: the whole gradient within 10%, each leaf pointing the
    # same way (a 4-element BatchNorm leaf differed by 12% in norm, cosine 0.99).
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(g_)]) for g_ in (grads32, grads16))
    assert float(jnp.linalg.norm(flat16 - flat32)) <= 0.1 * float(jnp.linalg.norm(flat32))
    for g32, g16 in zip(jax.tree_util.tree_leaves(grads32), jax.tree_util.tree_leaves(grads16)):
        cosine = float(jnp.vdot(g32, g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16) + 1e-30))
        assert cosine > 0.9 or float(jnp.linalg.norm(g32)) < 1e-6
    for s32, s16 in zip(jax.tree_util.tree_leaves(stats32), jax.tree_util.tree_leaves(stats16)):
        np.testing.assert_allclose(s16, s32, rtol=2e-2, atol=2e-3)


def test_unknown_compute_dtype_is_a_clear_error():
    import pytest

    config = get_config("tiny")
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match="config.model.dtype must be one of"):
        create_model(config.model)
