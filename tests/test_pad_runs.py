"""A run trained with ``--config.data.resize=pad`` is read the same way everywhere: the analysis
API (`pcam_jax.load`) and ``pcam-jax maps`` give a non-square image the same probability and
map, and both bring it in as the training pipeline did (letterboxed, not stretched)."""

import csv

import numpy as np
import pytest
from PIL import Image

import pcam_jax
from pcam_jax import geometry
from pcam_jax.configs import get_config
from pcam_jax.models import abnormal_probability
from pcam_jax.training import loop
from tests.commands import pcam_jax_command


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory, fast_compilation):
    workdir = tmp_path_factory.mktemp("pad_run")
    config = get_config("tiny")
    config.data.data_dir = str(workdir / "data")
    config.data.resize = "pad"
    loop.train_and_evaluate(config, workdir, (1,))
    return workdir


def test_load_and_the_maps_command_agree_on_a_non_square_image(pad_run, tmp_path):
    image = (np.random.default_rng(5).random((23, 41)) * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "wide.png")
    run = pcam_jax.load(pad_run, stage=1)
    assert run.resize_mode == "pad"
    p_api = run.predict(image)[0]
    map_api = run.maps(image, method="positive_cam")[0]
    assert map_api.shape == (23, 41)

    # The probability is the eval forward of the letterboxed image (the pipeline's geometry) ...
    boxed = geometry.to_model_size(image / np.float32(255), 32, "pad")
    assert not boxed[:4].any() and not boxed[-4:].any()           # 23x41 -> 18x32: rows of zeros
    want = float(abnormal_probability(run.model, run.variables, boxed[None, ..., None])[0][0])
    np.testing.assert_allclose(p_api, want, rtol=1e-5, atol=1e-6)
    stretched = geometry.to_model_size(image / np.float32(255), 32, "stretch")
    other = float(abnormal_probability(run.model, run.variables, stretched[None, ..., None])[0][0])
    assert abs(other - p_api) > 1e-6, "stretched and letterboxed inputs should differ; the test would not see a mix-up"

    # ... and `pcam-jax maps` gives the same probability and map.
    assert pcam_jax_command("maps", "--workdir", pad_run, "--method", "positive_cam", "--out",
                            tmp_path / "out", tmp_path / "wide.png") == 0
    with open(tmp_path / "out" / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    np.testing.assert_allclose(float(row["p_abnormal"]), p_api, rtol=1e-5, atol=1e-6)
    from pcam_jax.run import inference

    result = next(inference.predict_files(run, [tmp_path / "wide.png"], method="positive_cam"))
    np.testing.assert_allclose(result.probability, p_api, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.saliency, map_api, atol=2e-3)
