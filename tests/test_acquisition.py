"""Acquisition functions against numpy loops, and the selection list's ranking and reading."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax.data import clinician_labels
from pcam_jax.labelling import acquisition, selection


def test_binary_entropy_is_the_bernoulli_entropy_in_bits():
    p = np.array([0.5, 0.1, 0.9, 0.0, 1.0, 0.25])
    expected = [-(q * np.log2(q) + (1 - q) * np.log2(1 - q)) if 0 < q < 1 else 0.0 for q in p]
    np.testing.assert_allclose(acquisition.binary_entropy(jnp.asarray(p)), expected, atol=1e-6)


def test_map_entropy_matches_a_numpy_loop_and_its_ends():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 4)).astype(np.float32)
    maps[1] = 0.0            # nothing highlighted: flat, 1
    maps[2] = 0.0
    maps[2, 1, 2] = 0.7      # one hot pixel: 0
    expected = []
    for m in maps:
        q = m.ravel() / m.sum() if m.sum() > 0 else np.full(m.size, 1 / m.size)
        expected.append(-sum(v * np.log(v) for v in q if v > 0) / np.log(m.size))
    np.testing.assert_allclose(acquisition.map_entropy(jnp.asarray(maps)), expected, rtol=1e-5, atol=1e-6)
    assert expected[1] == pytest.approx(1.0) and expected[2] == pytest.approx(0.0)


def test_disagreement_is_one_minus_mean_pairwise_correlation():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 2, 6, 6)).astype(np.float32)
    maps[2, 1] = 0.5  # a constant map correlates 0
    expected = []
    for b in range(2):
        rs = []
        for i, j in itertools.combinations(range(3), 2):
            a, c = maps[i, b].ravel(), maps[j, b].ravel()
            rs.append(0.0 if a.std() == 0 or c.std() == 0 else np.corrcoef(a, c)[0, 1])
        expected.append(1 - np.mean(rs))
    np.testing.assert_allclose(acquisition.disagreement(jnp.asarray(maps)), expected, atol=1e-5)
    same = np.stack([maps[0], maps[0]])
    np.testing.assert_allclose(acquisition.disagreement(jnp.asarray(same)), [0.0, 0.0], atol=1e-5)


def test_tta_transforms_invert_exactly_away_from_the_shifted_border():
    x = jnp.asarray(np.random.default_rng(2).random((2, 16, 16, 1)), jnp.float32)
    d = 2
    for forward, inverse in acquisition.tta_transforms(d):
        back = np.asarray(inverse(forward(x)))
        np.testing.assert_array_equal(back[:, d:-d, d:-d], np.asarray(x)[:, d:-d, d:-d])
    moved = np.asarray(acquisition.shift(x, 1, -2))  # content moves down 1, left 2
    np.testing.assert_array_equal(moved[:, 1:, :-2], np.asarray(x)[:, :-1, 2:])


def test_random_scores_are_seeded():
    np.testing.assert_array_equal(acquisition.random_scores(10, 3), acquisition.random_scores(10, 3))
    assert not np.array_equal(acquisition.random_scores(10, 3), acquisition.random_scores(10, 4))


def test_rank_orders_by_score_then_path_and_keeps_n(tmp_path):
    rows = selection.rank(["c", "a", "b", "d"], np.array([0.5, 0.9, 0.5, 0.1]), 3)
    assert rows == [("a", 0.9, 1), ("b", 0.5, 2), ("c", 0.5, 3)]
    selection.write_list(rows, tmp_path / "list.csv")
    assert clinician_labels.read_list(tmp_path / "list.csv") == ["a", "b", "c"]


def test_read_list_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pcam-jax select"):
        clinician_labels.read_list(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,score\nx,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: .*'path'"):
        clinician_labels.read_list(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("path\nx\nx\n")
    with pytest.raises(ValueError, match="listed twice"):
        clinician_labels.read_list(twice)


def test_a_model_acquisition_scores_as_its_pure_function_on_the_models_maps():
    from pcam_jax import configs, maps as maps_lib
    from pcam_jax.models import abnormal_probability, classifier_apply_fn, create_model, head_kernel
    import jax

    config = configs.get_config("tiny")
    model = create_model(config.model)
    x = jnp.asarray(np.random.default_rng(3).random((2, 32, 32, 1)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    p, _ = abnormal_probability(model, variables, x)
    got = acquisition.make_score_fn(model, "uncertainty", image_size=32)(variables, x)
    np.testing.assert_allclose(got, acquisition.binary_entropy(p), atol=1e-5)
    raw = maps_lib.all_maps(classifier_apply_fn(model, variables), head_kernel(variables["params"]), x,
                            jnp.ones(2, jnp.int32), ("cam", "grad_cam"))
    post = [maps_lib.postprocess(raw[m], 32, 32) for m in ("cam", "grad_cam")]
    got = acquisition.make_score_fn(model, "map_disagreement", methods=("cam", "grad_cam"), image_size=32)(variables, x)
    np.testing.assert_allclose(got, acquisition.disagreement(jnp.stack(post)), atol=1e-4)
    with pytest.raises(ValueError, match="two or more"):
        acquisition.make_score_fn(model, "map_disagreement", methods=("cam",), image_size=32)
