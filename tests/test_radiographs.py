"""The radiograph reader against grey levels worked out by hand from the DICOM standard.

Every DICOM here is written by pydicom in the test (tests/dicom_files.py). Expected values are
closed forms per pixel on small known arrays, never the code under test.
"""

import numpy as np
import PIL.Image
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

from pcam_jax.data import radiographs
from pcam_jax.data.radiographs import RadiographReadError, read_radiograph, read_radiograph_with_info
from tests import dicom_files

EPS = 1e-6


def ramp(bits: int, signed: bool = False) -> np.ndarray:
    """(4, 8) stored values covering the whole range of ``bits`` bits, both ends included."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return np.round(np.linspace(low, high, 32)).astype(np.int64).reshape(4, 8)


def write_read(tmp_path, ds, name="image.dcm", **kwargs):
    path = tmp_path / name
    dicom_files.write(ds, path)
    return read_radiograph_with_info(path, **kwargs)


@pytest.mark.parametrize("bits", [10, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_stored_range_without_window(tmp_path, bits, photometric):
    stored = ramp(bits)
    image, info = write_read(tmp_path, dicom_files.dataset(stored, bits_stored=bits,
                                                           photometric=photometric))
    expected = stored / (2**bits - 1)
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    assert image.dtype == np.float32 and image.shape == (4, 8)
    np.testing.assert_allclose(image, expected, atol=EPS)
    assert (info.format, info.bits, info.photometric, info.voi) == ("DICOM", bits, photometric,
                                                                    "stored_range")
    assert info.window == (0.0, 2.0**bits - 1)


def test_monochrome1_cr_with_junk_high_bits_is_not_saturated(tmp_path):
    # The case: 10 bits stored in 16, MONOCHROME1; bits 10-15 carry an overlay.
    stored = ramp(10)
    ds = dicom_files.dataset(stored | 0xF000, bits_stored=10, photometric="MONOCHROME1")
    image, _ = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, 1 - stored / 1023, atol=EPS)
    assert image[0, 0] == 1.0 and image[-1, -1] == 0.0  # stored 0 is white, 1023 black


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_linear_window(tmp_path, photometric):
    stored = ramp(12)
    ds = dicom_files.dataset(stored, bits_stored=12, photometric=photometric)
    ds.WindowCenter, ds.WindowWidth = 2048, 1001
    image, info = write_read(tmp_path, ds)
    # PS3.3 C.11.2.1.2.1: 0 at or below c - 0.5 - (w-1)/2 = 1547.5, 1 above 2547.5.
    expected = np.clip((stored - 2047.5) / 1000 + 0.5, 0, 1)
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    np.testing.assert_allclose(image, expected, atol=EPS)
    assert info.voi == "window LINEAR" and info.window == (1547.5, 2547.5)
    assert 0 < (expected > 0.999).mean() < 1 and 0 < (expected < 1e-3).mean() < 1  # both clips hit


def test_window_boundaries_by_hand():
    x = np.array([1547.0, 1547.5, 1548.0, 2047.5, 2547.5, 2548.0])
    np.testing.assert_allclose(radiographs.window(x, 2048, 1001),
                               [0.0, 0.0, 0.0005, 0.5, 1.0, 1.0], atol=1e-12)
    # Width 1 (the smallest LINEAR allows): a threshold, 1 strictly above c - 0.5.
    np.testing.assert_array_equal(radiographs.window(np.array([9.4, 9.5, 9.6]), 10, 1), [0, 0, 1])


def test_several_windows_take_the_first(tmp_path):
    stored = ramp(12)
    ds = dicom_files.dataset(stored, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [201, 501]
    image, _ = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, np.clip((stored - 999.5) / 200 + 0.5, 0, 1), atol=EPS)


def test_linear_exact_and_sigmoid(tmp_path):
    stored = ramp(12)
    for function, expected in [
            ("LINEAR_EXACT", np.clip((stored - 2000) / 1000 + 0.5, 0, 1)),
            ("SIGMOID", 1 / (1 + np.exp(-4 * (stored - 2000) / 1000)))]:
        ds = dicom_files.dataset(stored, bits_stored=12)
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2000, 1000, function
        image, info = write_read(tmp_path, ds, name=f"{function}.dcm")
        np.testing.assert_allclose(image, expected, atol=EPS)
        assert info.voi == f"window {function}"


def test_invalid_window_width_falls_back_to_stored_range(tmp_path):
    stored = ramp(12)
    ds = dicom_files.dataset(stored, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 0
    image, info = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, stored / 4095, atol=EPS)
    assert info.voi == "stored_range"


def test_rescale_then_window_in_modality_units(tmp_path):
    stored = ramp(12)
    ds = dicom_files.dataset(stored, bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = 0, 2001  # in rescaled units: 2 * stored - 1024
    image, _ = write_read(tmp_path, ds)
    expected = np.clip((2 * stored - 1024 + 0.5) / 2000 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=EPS)
    # Without a window the stored range, rescaled, is the window: [-1024, 7166].
    del ds.WindowCenter, ds.WindowWidth
    image, info = write_read(tmp_path, ds, name="no_window.dcm")
    np.testing.assert_allclose(image, (2 * stored - 1024 + 1024) / 8190, atol=EPS)
    assert info.window == (-1024.0, 7166.0)


def test_negative_rescale_slope_reverses_the_range(tmp_path):
    stored = ramp(10)
    ds = dicom_files.dataset(stored, bits_stored=10)
    ds.RescaleSlope, ds.RescaleIntercept = -1, 100
    image, info = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, (100 - stored - (100 - 1023)) / 1023, atol=EPS)
    assert info.window == (-923.0, 100.0)


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = np.array([[0, 9, 10, 11], [12, 13, 14, 1023]])
    ds = dicom_files.dataset(stored, bits_stored=10, photometric="MONOCHROME1")
    ds.WindowCenter, ds.WindowWidth = 512, 1024  # ignored: the LUT sequence comes first
    ds.VOILUTSequence = [dicom_files.lut_item(10, [0, 100, 200, 255], bits=8)]
    image, info = write_read(tmp_path, ds)
    # Below the first mapped value (10): entry 0; past the last (13): entry 3.
    lut_out = np.array([[0, 0, 0, 100], [200, 255, 255, 255]]) / 255
    np.testing.assert_allclose(image, 1 - lut_out, atol=EPS)
    assert info.voi == "lut" and info.window == (10.0, 13.0)


def test_voi_lut_written_as_us_values(tmp_path):
    stored = np.array([[0, 1, 2, 3]])
    ds = dicom_files.dataset(stored, bits_stored=12)
    item = pydicom.Dataset()
    item.LUTDescriptor = [3, 1, 12]
    item.add_new(0x00283006, "US", [4095, 1000, 0])
    ds.VOILUTSequence = [item]
    image, _ = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, [[1, 1, 1000 / 4095, 0]], atol=EPS)


def test_modality_lut_sequence_replaces_rescale(tmp_path):
    stored = np.array([[0, 1, 2, 3]])
    ds = dicom_files.dataset(stored, bits_stored=12)
    ds.ModalityLUTSequence = [dicom_files.lut_item(0, [10, 20, 30, 40], bits=8)]
    image, _ = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, [[10 / 255, 20 / 255, 30 / 255, 40 / 255]], atol=EPS)


def test_signed_image(tmp_path):
    stored = ramp(12, signed=True)
    assert stored.min() == -2048 and stored.max() == 2047
    image, info = write_read(tmp_path, dicom_files.dataset(stored, bits_stored=12, signed=True))
    np.testing.assert_allclose(image, (stored + 2048) / 4095, atol=EPS)
    assert info.window == (-2048.0, 2047.0)
    ds = dicom_files.dataset(stored, bits_stored=12, signed=True)
    ds.WindowCenter, ds.WindowWidth = -100, 401
    image, _ = write_read(tmp_path, ds, name="window.dcm")
    np.testing.assert_allclose(image, np.clip((stored + 100.5) / 400 + 0.5, 0, 1), atol=EPS)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_tiff_looking_preamble_is_read_as_dicom(tmp_path, suffix):
    stored = ramp(10) + 0xF000  # overlay junk: Pillow's view would saturate
    path = tmp_path / f"cr{suffix}"
    dicom_files.write_tiff_looking(
        dicom_files.dataset(stored, bits_stored=10, photometric="MONOCHROME1"), path)
    with PIL.Image.open(path) as trap:  # the trap is real: Pillow opens it as a 16-bit TIFF
        assert (trap.format, trap.mode, trap.size) == ("TIFF", "I;16", (8, 4))
        assert np.array_equal(np.asarray(trap), stored)
    image, info = read_radiograph_with_info(path)
    assert info.format == "DICOM" and info.photometric == "MONOCHROME1"
    np.testing.assert_allclose(image, 1 - (stored & 0x3FF) / 1023, atol=EPS)


def test_preamble_less_dcm_is_forced(tmp_path):
    stored = ramp(12)
    path = tmp_path / "bare.dcm"
    dicom_files.write(dicom_files.dataset(stored, bits_stored=12), path, preamble=b"")
    assert open(path, "rb").read()[128:132] != b"DICM"
    np.testing.assert_allclose(read_radiograph(path), stored / 4095, atol=EPS)
    # Under another suffix it is not recognised, and the message says what to do.
    path.rename(tmp_path / "bare.png")
    with pytest.raises(RadiographReadError, match=r"bare\.png: not an image.*\.dcm suffix"):
        read_radiograph(tmp_path / "bare.png")


def test_no_pixel_data(tmp_path):
    ds = dicom_files.dataset(ramp(10), bits_stored=10)
    del ds.PixelData
    path = tmp_path / "report.png"
    dicom_files.write(ds, path)
    with pytest.raises(RadiographReadError) as info:
        read_radiograph(path)
    message = str(info.value)
    assert message.startswith(f"{path}: DICOM file without pixel data") and "\n" not in message


def test_multi_frame_refused_by_name_or_frame_chosen(tmp_path):
    frames = np.stack([ramp(10), 1023 - ramp(10), ramp(10) // 2])
    path = tmp_path / "multi.dcm"
    dicom_files.write(dicom_files.dataset(frames, bits_stored=10), path)
    with pytest.raises(RadiographReadError, match=r"multi\.dcm: multi-frame DICOM \(3 frames\); "
                                                  r".*frame=0"):
        read_radiograph(path)
    image, info = read_radiograph_with_info(path, frame=1)
    np.testing.assert_allclose(image, (1023 - ramp(10)) / 1023, atol=EPS)
    assert info.frames == 3
    with pytest.raises(RadiographReadError, match="frame 3 requested of 3"):
        read_radiograph(path, frame=3)


def test_compressed_without_decoder_is_refused_with_the_fix(tmp_path):
    decoder = pydicom.pixels.get_decoder(JPEGLSLossless)
    if decoder.is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    ds = dicom_files.dataset(ramp(12), bits_stored=12, transfer_syntax=JPEGLSLossless)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "jls.dcm"
    dicom_files.write(ds, path)
    with pytest.raises(RadiographReadError) as info:
        read_radiograph(path)
    message = str(info.value)
    assert message.startswith(f"{path}: pixel data compressed as JPEG-LS Lossless")
    assert "pip install one of:" in message and "pylibjpeg-libjpeg" in message


def test_truncated_pixel_data(tmp_path):
    ds = dicom_files.dataset(ramp(10), bits_stored=10)
    ds.PixelData = ds.PixelData[:10]
    path = tmp_path / "short.dcm"
    dicom_files.write(ds, path)
    with pytest.raises(RadiographReadError, match=r"short\.dcm: DICOM pixel data cannot be decoded"):
        read_radiograph(path)


# ----------------------------------------------------------------------------- Pillow files

def sixteen_bit_values() -> np.ndarray:
    return np.array([[0, 1, 255, 256, 257, 4096], [30000, 32768, 65000, 65534, 65535, 12345]],
                    np.uint16)


@pytest.mark.parametrize("name, dtype", [("a.png", "<u2"), ("a.tif", "<u2"), ("b.tif", ">u2")])
def test_sixteen_bit_png_and_tiff_scale_by_bit_depth(tmp_path, name, dtype):
    values = sixteen_bit_values()
    PIL.Image.fromarray(values.astype(dtype)).save(tmp_path / name)
    image, info = read_radiograph_with_info(tmp_path / name)
    np.testing.assert_allclose(image, values / 65535, atol=EPS)
    assert info.bits == 16 and info.voi == "bit_depth" and info.window == (0.0, 65535.0)
    assert len(np.unique(image)) == values.size  # nothing clipped to a common value


def test_mode_i_tiff(tmp_path):
    values = sixteen_bit_values().astype(np.int32)
    PIL.Image.fromarray(values).save(tmp_path / "i.tif")
    image, info = read_radiograph_with_info(tmp_path / "i.tif")
    assert info.photometric == "I"
    np.testing.assert_allclose(image, values / 65535, atol=EPS)
    PIL.Image.fromarray(values * 4).save(tmp_path / "big.tif")
    with pytest.raises(RadiographReadError, match=r"big\.tif: TIFF mode I holds values in "
                                                  r"\[0, 262140\], outside 16 bits"):
        read_radiograph(tmp_path / "big.tif")


def test_eight_bit_twin_of_a_sixteen_bit_png(tmp_path):
    v = np.arange(256, dtype=np.uint16).reshape(16, 16)
    PIL.Image.fromarray((v * 257).astype(np.uint16)).save(tmp_path / "sixteen.png")
    PIL.Image.fromarray(v.astype(np.uint8)).save(tmp_path / "eight.png")
    sixteen, eight = read_radiograph(tmp_path / "sixteen.png"), read_radiograph(tmp_path / "eight.png")
    np.testing.assert_allclose(sixteen, eight, atol=1 / 255)
    np.testing.assert_allclose(eight, v / 255, atol=EPS)
    assert np.array_equal(radiographs.read_radiograph_uint8(tmp_path / "sixteen.png"), v)


def test_rgb_and_palette_become_luma(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 90]]], np.uint8)
    PIL.Image.fromarray(rgb).save(tmp_path / "rgb.png")
    PIL.Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    luma = (rgb @ np.array([0.299, 0.587, 0.114])) / 255
    for name in ("rgb.png", "rgba.png"):
        np.testing.assert_allclose(read_radiograph(tmp_path / name), luma, atol=1 / 255)


def test_float_and_multipage_and_garbage_files(tmp_path):
    PIL.Image.fromarray(np.ones((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(RadiographReadError, match=r"f\.tif: TIFF image of Pillow mode 'F'; save"):
        read_radiograph(tmp_path / "f.tif")
    pages = [PIL.Image.fromarray(sixteen_bit_values() // k) for k in (1, 2)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(RadiographReadError, match=r"pages\.tif: multi-page TIFF \(2 pages\)"):
        read_radiograph(tmp_path / "pages.tif")
    np.testing.assert_allclose(read_radiograph(tmp_path / "pages.tif", frame=1),
                               (sixteen_bit_values() // 2) / 65535, atol=EPS)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(RadiographReadError, match=r"junk\.png: not an image"):
        read_radiograph(tmp_path / "junk.png")
    with pytest.raises(RadiographReadError, match=r"absent\.png: cannot open the file"):
        read_radiograph(tmp_path / "absent.png")
    assert issubclass(RadiographReadError, ValueError)


@pytest.mark.parametrize("vr, first", [("US", 2**16 - 2), ("SS", -2)])
def test_voi_lut_of_a_signed_image_maps_from_a_negative_value(tmp_path, vr, first):
    stored = np.array([[-3, -2, -1, 0, 1]])
    ds = dicom_files.dataset(stored, bits_stored=12, signed=True)
    item = dicom_files.lut_item(0, [0, 128, 255], bits=8)
    item.add_new(0x00283002, vr, [3, first, 8])  # US: -2 as many modalities write it
    ds.VOILUTSequence = [item]
    image, info = write_read(tmp_path, ds)
    np.testing.assert_allclose(image, [[0, 0, 128 / 255, 1, 1]], atol=EPS)
    assert info.window == (-2.0, 0.0)
