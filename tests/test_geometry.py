"""`pcam_jax.geometry`, the one resize and letterbox module, against slow loops and each other:
the tf.data pipeline's resize, the host resize of `pcam_jax.run`, the in-jit interpolation
matrix of `pcam_jax.maps`, and the letterbox's content box."""

import numpy as np
import pytest

from pcam_jax import geometry
from tests.reference_loops import bilinear_loop


@pytest.mark.parametrize("shape", [(25, 20, 32, 32), (5, 4, 25, 20), (7, 5, 3, 11), (1, 1, 4, 4), (9, 9, 9, 9)])
def test_host_and_jit_resizes_equal_the_loop(shape):
    h, w, height, width = shape
    image = np.random.default_rng(h * w).random((h, w)).astype(np.float32)
    want = bilinear_loop(image[None].astype(np.float64), height, width)[0]
    np.testing.assert_allclose(geometry.resize_host(image, height, width), want, rtol=1e-5, atol=1e-6)
    got = geometry.resize_spatial(image[None], height, width)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [32, 320])
@pytest.mark.parametrize("shape", [(20, 40), (40, 30), (454, 373), (2880, 2304), (33, 33), (1, 500)])
def test_content_box_letterboxes_centred(shape, size):
    top, left, h, w = geometry.content_box(*shape, size, "pad")
    longer = max(shape)
    assert max(h, w) == size and 1 <= min(h, w) <= size
    for got, side in ((h, shape[0]), (w, shape[1])):   # rounded, at least one pixel
        assert abs(got - max(side * size / longer, 1.0)) <= 0.5 + 1e-3
    assert (top, left) == ((size - h) // 2, (size - w) // 2)  # the extra padding row/column at the bottom/right
    assert geometry.content_box(*shape, size, "stretch") == (0, 0, size, size)
    with pytest.raises(ValueError, match="stretch"):
        geometry.content_box(*shape, size, "crop")


@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("shape", [(45, 70), (32, 32), (100, 13), (20, 24)])
def test_host_model_input_equals_the_tf_pipeline(mode, shape):
    import tensorflow as tf

    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = geometry.tf_resize(tf.constant(image[..., None]), 32, mode).numpy()[..., 0]
    np.testing.assert_allclose(geometry.to_model_size(image, 32, mode), expected, atol=1e-5)  # float32 rounding


def test_crop_to_content_inverts_the_letterbox():
    image = np.random.default_rng(1).random((20, 40), dtype=np.float32)
    boxed = geometry.to_model_size(image, 32, "pad")          # rows 8..23 hold the image
    np.testing.assert_array_equal(geometry.crop_to_content(boxed, 20, 40, "pad"), boxed[8:24])
    assert geometry.crop_to_content(boxed, 20, 40, "stretch").shape == (32, 32)


@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolation_matrix_rows_are_the_taps(align_corners):
    for n_in, n_out in ((5, 9), (9, 5), (1, 3), (4, 1)):
        m = geometry.interpolation_matrix(n_in, n_out, align_corners)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
        ramp = np.arange(n_in, dtype=np.float32)
        lo, hi, w_lo, w_hi = geometry.interpolation_taps(n_in, n_out, align_corners)
        np.testing.assert_allclose(m @ ramp, w_lo * ramp[lo] + w_hi * ramp[hi], rtol=1e-6, atol=1e-6)


def test_decoder_upsampling_equals_the_interpolation_matrix():
    x = np.random.default_rng(2).random((2, 5, 7, 3), dtype=np.float32)
    np.testing.assert_allclose(geometry.upsample_decoder(x, 10, 14), geometry.resize_spatial(x, 10, 14),
                               rtol=1e-5, atol=1e-6)


def test_sample_bilinear_is_zero_outside_and_exact_on_pixels():
    image = np.random.default_rng(3).random((6, 5, 1), dtype=np.float32)
    y, x = np.meshgrid(np.arange(6, dtype=np.float32), np.arange(5, dtype=np.float32), indexing="ij")
    np.testing.assert_allclose(geometry.sample_bilinear(image, y, x), image, rtol=1e-6)
    out = geometry.sample_bilinear(image, np.array([[-2.0]]), np.array([[1.0]]))
    assert float(out[0, 0, 0]) == 0.0
    mid = geometry.sample_bilinear(image, np.array([[0.5]]), np.array([[0.25]]))[0, 0, 0]
    want = 0.5 * (0.75 * image[0, 0, 0] + 0.25 * image[0, 1, 0]) + 0.5 * (0.75 * image[1, 0, 0] + 0.25 * image[1, 1, 0])
    np.testing.assert_allclose(mid, want, rtol=1e-6)
