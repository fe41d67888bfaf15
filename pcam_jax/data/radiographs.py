"""Reading radiograph files right: DICOM through its header, 16-bit PNG/TIFF by their bit depth.

`read_radiograph(path)` returns float32 (H, W) in [0, 1] with high = dense/bright, as the image
is displayed; `read_radiograph_uint8` the same quantised to uint8 (what the TFDS builders store);
`read_radiograph_with_info` adds a `RadiographInfo` saying how the grey levels were obtained.

Why a reader of our own: Pillow opens some DICOM files through a TIFF-compatible 128-byte
preamble (a computed-radiography file may start with "II*\\0" and point a TIFF strip at the DICOM
pixel data). It returns mode "I;16", and ``convert("L")`` then clips every value above 255 and
never applies MONOCHROME1's inversion: the model sees a saturated image and nothing warns. 16-bit
PNGs go through the same clipping. So DICOM is detected by content first ("DICM" at byte 128, or
a forced pydicom read of a preamble-less ``.dcm``), whatever the suffix, and Pillow only ever
sees what is not DICOM.

DICOM grey levels, in the order of the standard's display pipeline (PS3.3 C.11):
    stored pixels (pydicom masks Bits Stored and sign-extends per Pixel Representation)
    -> modality LUT: Modality LUT Sequence, else Rescale Slope/Intercept
    -> VOI: VOI LUT Sequence (first item), else Window Center/Width (first pair) with the VOI
       LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), else the rescaled stored-bits range
    -> [0, 1], and MONOCHROME1 inverted (its low values are displayed white).
Colour DICOM (RGB, YBR_*) is reduced to ITU-R 601-2 luma over its stored range. Multi-frame files
are refused unless a frame is named; a compressed transfer syntax without a decoder installed is
refused with the packages that would decode it.

Pillow images: modes I;16* and I are divided by 65535 (never clipped to 8 bits); 8-bit L, RGB,
RGBA, LA, P, PA and 1 become PIL's luma (``convert("L")``) divided by 255.

Every failure is one `RadiographReadError` (a ValueError): ``"<path>: <what is wrong>; <the fix>"``.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import PIL.Image
from absl import logging
from etils import epath

_DICOM_SUFFIXES = (".dcm", ".dicom")
_EIGHT_BIT_MODES = ("L", "RGB", "RGBA", "LA", "P", "PA", "1")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's convert("L")


class RadiographReadError(ValueError):
    """A radiograph file that cannot be read right; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class RadiographInfo:
    """How a file's grey levels became [0, 1].

    format:      "DICOM", or Pillow's format name ("PNG", "TIFF", "JPEG", ...).
    bits:        bits that carry data: DICOM Bits Stored, 16 for Pillow I;16/I, else 8.
    photometric: DICOM Photometric Interpretation, or the Pillow mode.
    voi:         "lut" (VOI LUT Sequence), "window LINEAR|LINEAR_EXACT|SIGMOID", "stored_range"
                 (DICOM without VOI), "bit_depth" (Pillow).
    window:      (low, high): the input values mapped to 0 and 1 (after the modality LUT;
                 for MONOCHROME1 before the inversion, so low is displayed white).
    frames:      number of frames in the file (one was read).
    """

    format: str
    bits: int
    photometric: str
    voi: str
    window: tuple[float, float]
    frames: int = 1


# ----------------------------------------------------------------------------- grey-level math

def rescale(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """float64 of the same shape: the modality LUT ``slope * stored + intercept``."""
    return np.asarray(stored, np.float64) * slope + intercept


def lut_lookup(values: np.ndarray, first_mapped: int, table: np.ndarray) -> np.ndarray:
    """float64 like ``values``: a DICOM LUT (PS3.3 C.11.1.1), values below ``first_mapped``
    take ``table[0]``, values beyond the table its last entry."""
    index = np.clip(np.floor(np.asarray(values, np.float64)) - first_mapped, 0, len(table) - 1)
    return np.asarray(table, np.float64)[index.astype(np.int64)]


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"):
    """float64 in [0, 1] like ``values``: the VOI window of PS3.3 C.11.2.1.2 with y in [0, 1].

    LINEAR: 0 at or below c - 0.5 - (w-1)/2, 1 above c - 0.5 + (w-1)/2, linear in between
    (needs w >= 1); LINEAR_EXACT: (x - c)/w + 0.5 clipped; SIGMOID: 1 / (1 + exp(-4 (x - c)/w)).
    """
    x = np.asarray(values, np.float64)
    if function == "LINEAR":
        y = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else (x > center - 0.5) * 1.0
        return np.clip(y, 0.0, 1.0)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ValueError(f"VOI LUT Function {function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")


def window_bounds(center: float, width: float, function: str = "LINEAR") -> tuple[float, float]:
    """The input values a window maps to 0 and 1 (SIGMOID: where it reaches 0.12 and 0.88)."""
    if function == "LINEAR":
        return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return center - width / 2, center + width / 2


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """(lowest, highest) stored value of ``bits_stored`` bits, two's complement when signed."""
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def to_unit_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """float64 in [0, 1]: ``values`` mapped linearly from [low, high], clipped."""
    if high <= low:
        return (np.asarray(values, np.float64) > low) * 1.0
    return np.clip((np.asarray(values, np.float64) - low) / (high - low), 0.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 of a [0, 1] image, rounded (16-bit v * 257 becomes 8-bit v exactly)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- DICOM

def _error(path, what: str, fix: str):
    return RadiographReadError(f"{path}: {what}; {fix}")


def _lut(item, signed_input: bool, little_endian: bool):
    """(first mapped value, table int array, bits per entry) of a LUT sequence item."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16 entries
    if signed_input and first >= 2**15:  # descriptor read as US though the input is signed
        first -= 2**16
    data = item.LUTData
    if isinstance(data, bytes):  # VR OW: 16-bit words in the dataset's byte order
        table = np.frombuffer(data, "<u2" if little_endian else ">u2")
    else:
        table = np.atleast_1d(np.asarray(data, np.int64))
    return first, table[:entries].astype(np.int64), bits


def _first(value) -> float:
    """The first number of a single- or multi-valued DICOM element."""
    return float(np.ravel(np.asarray(value, np.float64))[0])


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _transfer_syntax(ds):
    """The dataset's transfer syntax; a preamble-less file has none recorded, so infer it."""
    import pydicom.uid

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                  pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return pydicom.uid.UID(syntax)


def _check_decoder(path, syntax) -> None:
    """Refuses a compressed transfer syntax that no installed plugin decodes, naming the fix."""
    import pydicom.pixels

    if not syntax.is_compressed:
        return
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise _error(path, f"pixel data in transfer syntax {syntax} ({syntax.name}), which pydicom "
                    "cannot decode", "convert it to an uncompressed DICOM or a 16-bit PNG") from None
    if not decoder.is_available:
        options = "; ".join(d.split(" - requires ")[-1] for d in decoder.missing_dependencies)
        raise _error(path, f"pixel data compressed as {syntax.name} ({syntax}) and no decoder is "
                    "installed", f"pip install one of: {options}")


def _dicom_pixels(path, ds, frame: int | None):
    """(stored pixels (H, W) or (H, W, 3), number of frames) of a DICOM dataset."""
    if "PixelData" not in ds:
        raise _error(path, "DICOM file without pixel data (a report, structured report or "
                    "presentation state, or not a DICOM file)", "export the image itself")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise _error(path, f"multi-frame DICOM ({frames} frames)",
                    "export one frame, or read it with frame=0 to take the first")
    if frame is not None and not 0 <= frame < frames:
        raise _error(path, f"frame {frame} requested of {frames}", f"pick 0..{frames - 1}")
    syntax = _transfer_syntax(ds)
    _check_decoder(path, syntax)
    try:
        if frames > 1:
            ds.pixel_array_options(index=frame)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types on truncated or inconsistent pixel data
        raise _error(path, f"DICOM pixel data cannot be decoded ({type(e).__name__}: {e})",
                    "the file is truncated or its header is inconsistent; export it again") from e
    return pixels, frames


def _dicom_grey(path, ds, pixels) -> tuple[np.ndarray, str, tuple[float, float]]:
    """float64 (H, W) in [0, 1] before any MONOCHROME1 inversion, the VOI used, its bounds."""
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    # Modality LUT: a sequence replaces the rescale when present.
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        first, table, lut_bits = _lut(ds.ModalityLUTSequence[0], signed, little)
        values = lut_lookup(pixels, first, table)
        low, high = 0, 2**lut_bits - 1
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        values = rescale(pixels, slope, intercept)
        low, high = sorted(rescale(np.array(stored_range(bits, signed)), slope, intercept))
    # VOI: LUT sequence, else the first window, else the whole rescaled stored range.
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        first, table, lut_bits = _lut(ds.VOILUTSequence[0], signed, little)
        grey = lut_lookup(values, first, table) / (2**lut_bits - 1)
        return np.clip(grey, 0.0, 1.0), "lut", (float(first), float(first + len(table) - 1))
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is not None and widths is not None:
        center, width = _first(centers), _first(widths)  # several windows: the first
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        valid_width = width >= 1 if function == "LINEAR" else width > 0  # PS3.3 C.11.2.1.2
        if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") and valid_width:
            return (window(values, center, width, function), f"window {function}",
                    window_bounds(center, width, function))
        logging.warning("%s: window centre %g width %g function %s is invalid; using the stored-"
                        "bits range instead", path, center, width, function)
    return to_unit_range(values, low, high), "stored_range", (float(low), float(high))


def _read_dicom(path, ds, frame: int | None) -> tuple[np.ndarray, RadiographInfo]:
    pixels, frames = _dicom_pixels(path, ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if photometric in _MONOCHROME:
        if pixels.ndim != 2:
            raise _error(path, f"{photometric} pixel data of shape {pixels.shape}",
                        "export a single-sample grayscale image")
        grey, voi, bounds = _dicom_grey(path, ds, pixels)
        if photometric == "MONOCHROME1":  # low values are displayed white
            grey = 1.0 - grey
    elif photometric in _COLOUR:  # pydicom returns RGB (it converts YBR); no modality/VOI applies
        low, high = stored_range(bits, False)
        grey, voi, bounds = to_unit_range(pixels @ _LUMA, low, high), "stored_range", (low, high)
    else:
        raise _error(path, f"DICOM photometric interpretation {photometric or 'missing'!r}",
                    "export it as MONOCHROME2 (or MONOCHROME1) grayscale")
    info = RadiographInfo("DICOM", bits, photometric, voi, (float(bounds[0]), float(bounds[1])),
                          frames)
    return grey.astype(np.float32), info


def _dicom_dataset(path, data: bytes, force: bool):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception as e:  # pydicom raises many types on a corrupt header
        raise _error(path, f"unreadable DICOM header ({type(e).__name__}: {e})",
                    "the file is truncated or corrupt; export it again") from e


# ----------------------------------------------------------------------------- Pillow

def _read_pillow(path, data: bytes, frame: int | None) -> tuple[np.ndarray, RadiographInfo]:
    try:
        image = PIL.Image.open(io.BytesIO(data))
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and frame is None:
            raise _error(path, f"multi-page {image.format} ({frames} pages)",
                        "save one page, or read it with frame=0 to take the first")
        if frame is not None:
            if not 0 <= frame < frames:
                raise _error(path, f"page {frame} requested of {frames}", f"pick 0..{frames - 1}")
            image.seek(frame)
        image.load()
    except RadiographReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's invalid/truncated errors
        raise _error(path, f"not an image Pillow or pydicom can read ({e})",
                    "re-export it as PNG or DICOM; a DICOM without its 128-byte preamble needs a "
                    ".dcm suffix") from e
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise _error(path, f"{image.format} mode {mode} holds values in [{values.min():g}, "
                        f"{values.max():g}], outside 16 bits", "save it as a 16-bit PNG")
        if values.max() < 2**12:
            logging.warning("%s: 16-bit image whose largest value is %d (< 4096): it may hold 10- "
                            "or 12-bit data unscaled and will read dark", path, values.max())
        grey, bits, scale = values / 65535.0, 16, 65535.0
    elif mode in _EIGHT_BIT_MODES:
        grey, bits, scale = np.asarray(image.convert("L")).astype(np.float64) / 255.0, 8, 255.0
    else:
        raise _error(path, f"{image.format} image of Pillow mode {mode!r}",
                    "save it as 8- or 16-bit grayscale PNG")
    info = RadiographInfo(image.format or "unknown", bits, mode, "bit_depth", (0.0, scale), frames)
    return grey.astype(np.float32), info


# ----------------------------------------------------------------------------- entry points

def read_radiograph_with_info(path, *, frame: int | None = None
                              ) -> tuple[np.ndarray, RadiographInfo]:
    """(float32 (H, W) in [0, 1], high = bright as displayed; its `RadiographInfo`).

    DICOM is recognised by content before Pillow sees the file, whatever its suffix.
    ``frame``: for multi-frame DICOM or multi-page TIFF, the frame to read (default: refuse).
    """
    file = epath.Path(path)
    try:
        data = file.read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise _error(path, f"cannot open the file ({type(e).__name__})", "check the path") from e
    if _is_dicom(data):
        return _read_dicom(path, _dicom_dataset(path, data, force=False), frame)
    if os.path.splitext(file.name)[1].lower() in _DICOM_SUFFIXES:
        return _read_dicom(path, _dicom_dataset(path, data, force=True), frame)
    return _read_pillow(path, data, frame)


def read_radiograph(path, *, frame: int | None = None) -> np.ndarray:
    """float32 (H, W) in [0, 1], high = dense/bright as on a displayed radiograph."""
    return read_radiograph_with_info(path, frame=frame)[0]


def read_radiograph_uint8(path, *, frame: int | None = None) -> np.ndarray:
    """uint8 (H, W): `read_radiograph` quantised to 0..255 (what the TFDS records store)."""
    return to_uint8(read_radiograph(path, frame=frame))
