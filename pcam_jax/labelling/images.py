"""The listed images as the labelling page shows them: the pixels the model reads, as PNG.

Two sources, both keyed by the list's paths (nothing else can be asked for):

* `DatasetImages`: the records of the run's dataset (train split), the uint8 image its TFDS
  builder stored: a DICOM or 16-bit file appears exactly as it was decoded for training
  (`pcam_jax.data.radiographs` through the builder), synthetic images as generated.
* `FileImages`: files under a folder, read by `pcam_jax.data.radiographs.read_radiograph_uint8`
  (DICOM through its header, never Pillow), for labelling without a trained run.

Each gives `sizes` {path: (height, width)} and `png(path)` (encoded grey PNG bytes); `pixels`
(uint8 (H, W)) feeds the model's map suggestion.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
import PIL.Image


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 1|4) -> PNG bytes (an array we made: Pillow only encodes here)."""
    buffer = io.BytesIO()
    array = np.asarray(pixels)
    PIL.Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _decode_png(data: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data)) as image:  # our own PNG/JPEG records, never DICOM
        return np.asarray(image.convert("L"))


def _png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the header alone."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


class DatasetImages:
    """The listed paths' images from the train split of ``config``'s dataset."""

    def __init__(self, config, paths: list[str], data_dir=None, split: str = "train"):
        from pcam_jax.data import pipeline

        tf = pipeline.tf
        wanted = tf.constant(paths)
        records = pipeline.load_records(config, split, data_dir).filter(  # no autograph: `tf` is a local here
            tf.autograph.experimental.do_not_convert(lambda r: tf.reduce_any(tf.equal(r["path"], wanted))))
        self._encoded = {}
        for record in records.map(lambda r: (r["path"], r["image"])).as_numpy_iterator():
            path, image = record[0].decode(), record[1]
            self._encoded[path] = bytes(image) if isinstance(image, (bytes, np.bytes_)) else encode_png(image)
        missing = [p for p in paths if p not in self._encoded]
        if missing:
            raise ValueError(f"{len(missing)} listed image(s) are not in the {split} split of the run's dataset, e.g. "
                             f"{missing[0]!r}; list the dataset's own paths (as `pcam-jax select` writes them)")
        self._decoded = {}  # decoded on demand: a few hundred full-size radiographs add up
        self.sizes = {p: _png_size(self._encoded[p]) for p in paths}

    def pixels(self, path: str) -> np.ndarray:
        if path not in self._decoded:
            self._decoded[path] = _decode_png(self._encoded[path])
        return self._decoded[path]

    def png(self, path: str) -> bytes:
        data = self._encoded[path]
        return data if data[:8] == b"\x89PNG\r\n\x1a\n" else encode_png(self.pixels(path))


class FileImages:
    """The listed paths as files under ``root`` (each must resolve inside it)."""

    def __init__(self, root, paths: list[str]):
        from pcam_jax.data.radiographs import read_radiograph_uint8

        self.root = pathlib.Path(root).resolve()
        self._pixels = {}
        for path in paths:
            file = (self.root / path).resolve()
            if not file.is_relative_to(self.root):
                raise ValueError(f"listed path {path!r} leads outside --image_root {self.root}; list paths "
                                 "relative to that folder")
            if not file.is_file():
                raise FileNotFoundError(f"listed image {path!r} is not a file under --image_root {self.root}")
            self._pixels[path] = read_radiograph_uint8(file)
        self.sizes = {p: a.shape[:2] for p, a in self._pixels.items()}

    def pixels(self, path: str) -> np.ndarray:
        return self._pixels[path]

    def png(self, path: str) -> bytes:
        return encode_png(self.pixels(path))


def suggestion_png(saliency: np.ndarray, cmap: str = "jet", max_alpha: float = 0.6) -> bytes:
    """A map (H, W) in [0, 1] as an RGBA PNG: the colour map's colour, opacity growing with the
    value (low values are see-through, so the radiograph stays readable under it)."""
    import matplotlib

    m = np.clip(np.nan_to_num(np.asarray(saliency, np.float64)), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](m)
    rgba[..., 3] = max_alpha * m
    return encode_png((rgba * 255).round().astype(np.uint8))
