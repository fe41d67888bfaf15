"""`pcam_jax.run.inference`: the batched probability + map path of `pcam-jax maps`, against the
training pipeline's resize, `maps.postprocess`, the eval forward and the map functions."""

import numpy as np
import PIL.Image
import pytest

from pcam_jax import geometry, maps as maps_lib
from pcam_jax.run import inference
from pcam_jax.run.analysis import Run
from pcam_jax.configs import get_config
from pcam_jax.models import abnormal_probability, create_model, init_variables
from tests import dicom_files

pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py


@pytest.fixture(scope="module")
def run():
    import jax

    config = get_config("tiny")
    model = create_model(config.model)
    variables = init_variables(model, jax.random.key(3), 32)
    return Run(config=config, variables=variables, stage=3, step=0)


def test_map_to_image_equals_postprocess():
    raw = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    expected = np.asarray(maps_lib.postprocess(raw[None], 50, 37))[0]
    np.testing.assert_allclose(inference.map_to_image(raw, 50, 37, size=32, mode="stretch"), expected, atol=1e-5)


@pytest.mark.parametrize("method", ["positive_cam", "grad_cam", "decoder"])
def test_one_forward_gives_the_eval_probability_and_the_map(run, method):
    images = np.random.default_rng(2).random((4, 32, 32, 1), dtype=np.float32)
    probs, raw = inference.make_predict_and_map_fn(run.model, method)(run.variables, images)
    expected_probs, _ = abnormal_probability(run.model, run.variables, images)
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw, run.raw_maps(images, (method,))[method], rtol=1e-4, atol=1e-5)


def _twins(tmp_path):
    """An 8-bit PNG and its correct 16-bit PNG and MONOCHROME1 12-bit DICOM twins."""
    rng = np.random.default_rng(4)
    eight = (rng.random((41, 57)) * 255).round().astype(np.uint8)
    PIL.Image.fromarray(eight).save(tmp_path / "eight.png")
    PIL.Image.fromarray((eight.astype(np.uint16) * 257)).save(tmp_path / "sixteen.png")
    stored = np.round((255 - eight.astype(np.float64)) * 4095 / 255).astype(np.uint16)
    dicom_files.write(dicom_files.dataset(stored, bits_stored=12, photometric="MONOCHROME1"),
                      tmp_path / "inverted.dcm")
    return eight


def test_dicom_and_16_bit_png_give_their_8_bit_twins_probability(run, tmp_path):
    eight = _twins(tmp_path)
    assert PIL.Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    names = ["eight.png", "sixteen.png", "inverted.dcm"]
    results = list(inference.predict_files(run, [tmp_path / n for n in names], batch_size=2))
    assert [r.error for r in results] == [None] * 3
    probs = [r.probability for r in results]
    np.testing.assert_allclose(probs, probs[0], atol=1e-3)
    np.testing.assert_allclose(results[2].image, eight / 255.0, atol=1e-3)
    assert all(r.saliency.shape == (41, 57) for r in results)
    # The 8-bit PNG's probability is the eval forward of the image resized as in training.
    x = geometry.to_model_size(eight / np.float32(255), 32, "stretch")[None, ..., None]
    np.testing.assert_allclose(probs[0], abnormal_probability(run.model, run.variables, x)[0][0], atol=1e-6)


def test_unreadable_files_are_one_line_naming_them_and_the_rest_is_processed(run, tmp_path):
    _twins(tmp_path)
    ds = dicom_files.dataset(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    dicom_files.write(ds, tmp_path / "report.dcm")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [tmp_path / n for n in ("report.dcm", "eight.png", "broken.png")]
    results = list(inference.predict_files(run, paths, batch_size=4))
    assert results[1].error is None and results[1].probability is not None
    for result, name in ((results[0], "report.dcm"), (results[2], "broken.png")):
        assert name in result.error and "\n" not in result.error
    assert "without pixel data" in results[0].error


def test_run_predict_and_maps_read_files_right(run, tmp_path):
    eight = _twins(tmp_path)
    expected = run.predict(eight)
    for name in ("sixteen.png", "inverted.dcm"):
        np.testing.assert_allclose(run.predict(str(tmp_path / name)), expected, atol=1e-3)
        assert run.maps(tmp_path / name).shape == (1, 41, 57)
    # Run.predict resizes as the batched path and the training pipeline do.
    np.testing.assert_allclose(
        expected, next(inference.predict_files(run, [tmp_path / "eight.png"])).probability, atol=1e-6)
