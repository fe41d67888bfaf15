"""Batched inference on radiograph files: probability and map from one jitted forward per batch.

What `pcam-jax maps` runs (and a script may call directly)::

    from pcam_jax.run import analysis, inference
    run = analysis.load("work/mura", stage=3)
    for result in inference.predict_files(run, paths, method="decoder", batch_size=16):
        result.path, result.probability, result.saliency   # saliency (H, W) at the file's size

Why not `Run.predict` + `Run.maps` per image: that is two forwards per image, each padded to a
chunk of 16, and a resize traced anew for every new image size. Here:

* files are read by `pcam_jax.data.radiographs.read_radiograph` (DICOM through its header,
  16-bit PNG/TIFF by bit depth) on a pool of threads, a batch ahead of the device;
* each image is brought to the model's size on the host with the training pipeline's resize
  (`to_model_size`: bilinear with half-pixel centres and no antialiasing, as ``tf.image.resize``
  in `pcam_jax.data.pipeline.resize`, ``stretch`` or ``pad``), so a file is seen as in training;
* one jitted program per (batch size, method) returns the abnormal probability and the raw map
  of every image from a single forward (`make_predict_and_map_fn`);
* the map is post-processed to the file's size on the host (`map_to_image`: ReLU, min-max,
  bilinear resize, min-max: `pcam_jax.maps.postprocess`, as two small matrix products).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import maps as maps_lib
from pcam_jax.models import ABNORMAL, PCAMNet, classifier_apply_fn, head_kernel, probability_of_abnormal

DECODER = maps_lib.DECODER


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, w_first, w_second) per output index: the two input samples and weights
    of `maps.interpolation_matrix`'s row (half-pixel centres clamped at the borders:
    tf.image.resize's bilinear, antialias=False). A row has at most two adjacent non-zeros."""
    matrix = maps_lib.interpolation_matrix(n_in, n_out, align_corners=False).astype(np.float32)
    first = np.argmax(matrix != 0, axis=1)
    second = np.minimum(first + 1, n_in - 1)
    rows = np.arange(n_out)
    w_first = matrix[rows, first]
    w_second = np.where(second != first, matrix[rows, second], 0.0).astype(np.float32)
    return first, second, w_first, w_second


def _resize_axis0(x: np.ndarray, n_out: int) -> np.ndarray:
    first, second, w_first, w_second = _taps(x.shape[0], n_out)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return x[first] * w_first.reshape(shape) + x[second] * w_second.reshape(shape)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (H, W) -> (height, width), bilinear as ``tf.image.resize`` (no antialiasing).

    Two samples per output pixel along each axis, gathered (the interpolation matrix's product
    with a 2500x2048 radiograph cost ~1.6 GFLOP, this ~2 MFLOP)."""
    x = np.asarray(image, np.float32)
    return np.ascontiguousarray(_resize_axis0(_resize_axis0(x, height).T, width).T, dtype=np.float32)


def content_box(height: int, width: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the image inside the model's square input (``pad`` letterboxes it
    centred, extra padding bottom/right, as `pcam_jax.data.pipeline.resize`)."""
    if mode == "stretch":
        return 0, 0, size, size
    if mode != "pad":
        raise ValueError(f"config.data.resize must be 'stretch' or 'pad', got {mode!r}.")
    scale = size / max(height, width)
    new_h = min(max(int(np.round(np.float32(height) * np.float32(scale))), 1), size)
    new_w = min(max(int(np.round(np.float32(width) * np.float32(scale))), 1), size)
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def to_model_size(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """float32 (H, W) in [0, 1] -> (size, size), as the training pipeline resizes an image."""
    top, left, h, w = content_box(*image.shape, size, mode)
    out = np.zeros((size, size), np.float32)
    out[top:top + h, left:left + w] = resize_bilinear(image, h, w)
    return np.clip(out, 0.0, 1.0)


def _normalize(m: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    shifted = m - m.min()
    span = shifted.max()
    return shifted / (span + eps) if span > 0 else np.zeros_like(shifted)


def map_to_image(raw: np.ndarray, height: int, width: int, *, size: int, mode: str = "stretch",
                 eps: float = 1e-7) -> np.ndarray:
    """A raw map (h, w) of one image -> (height, width) in [0, 1], as `maps.postprocess`.

    With ``pad``, the part of the map over the padding is cut away first (at the map's
    resolution, rounded outwards), so the map lines up with the file's pixels."""
    m = _normalize(np.maximum(np.asarray(raw, np.float32), 0.0), eps)
    if mode == "pad":
        top, left, h, w = content_box(height, width, size, mode)
        sy, sx = m.shape[0] / size, m.shape[1] / size
        r0, c0 = int(np.floor(top * sy)), int(np.floor(left * sx))
        r1, c1 = int(np.ceil((top + h) * sy)), int(np.ceil((left + w) * sx))
        m = m[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)]
    return _normalize(resize_bilinear(m, height, width), eps)


def make_predict_and_map_fn(model: PCAMNet, method: str, chunk: int = 32):
    """Jitted ``fn(variables, images (B, S, S, 1)) -> (p_abnormal (B,), raw maps)`` from one forward.

    Raw maps are (B, h, w) at feature resolution for the classifier methods (for the abnormal
    class) and (B, S, S) for the decoder; `map_to_image` finishes them per file.
    """
    if method != DECODER and method not in maps_lib.METHODS:
        raise ValueError(f"unknown map method {method!r}; choose from {maps_lib.METHODS + (DECODER,)}")

    @jax.jit
    def fn(variables, images):
        if method == DECODER:
            logits, _, lesion = model.apply(variables, images, train=False,
                                            method=PCAMNet.classify_and_segment)
            raw = lesion
        else:
            targets = jnp.full((images.shape[0],), ABNORMAL, jnp.int32)
            logits, found = maps_lib.maps_and_logits(
                classifier_apply_fn(model, variables), head_kernel(variables["params"]), images,
                targets, (method,), chunk)
            raw = found[method]
        probs = probability_of_abnormal(logits)  # the maps' own forward: no second pass
        return probs, raw

    return fn


@dataclasses.dataclass
class Result:
    """One file's outcome: its probability and map, or the error that stopped its reading."""

    path: str
    probability: float | None = None
    saliency: np.ndarray | None = None   # (H, W) in [0, 1] at the file's size
    image: np.ndarray | None = None      # (H, W) float32 in [0, 1], as read
    error: str | None = None


def _load(path, size: int, mode: str):
    from pcam_jax.data.radiographs import read_radiograph

    try:
        image = read_radiograph(path)
    except (ValueError, OSError) as error:  # RadiographReadError is a ValueError
        return path, None, None, str(error) if str(path) in str(error) else f"{path}: {error}"
    return path, image, to_model_size(image, size, mode), None


def predict_files(run, paths: Iterable, *, method: str = "positive_cam", batch_size: int = 16,
                  workers: int | None = None) -> Iterator[Result]:
    """`Result` per path, in order: reading runs on ``workers`` threads a batch ahead of the
    device, every full batch is one call of `make_predict_and_map_fn` (the last one padded)."""
    from pcam_jax.training import stages as stages_lib

    if method == DECODER and not stages_lib.get(run.stage).trains_decoder:
        raise ValueError(f"the decoder map needs a run of a stage that trains the decoder; this is "
                         f"stage {run.stage}")
    size, mode = run.image_size, str(run.config.data.resize)
    cache = run.__dict__.setdefault("_predict_and_map_fns", {})  # one compilation per run and method
    if method not in cache:
        cache[method] = make_predict_and_map_fn(run.model, method, int(run.config.eval.score_cam_chunk))
    fn = cache[method]
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        paths = iter(paths)

        def fill():
            while len(pending) < 2 * batch_size:
                path = next(paths, None)
                if path is None:
                    return
                pending.append(pool.submit(_load, path, size, mode))

        fill()
        while pending:
            loaded = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            fill()  # the next batch reads while this one runs
            good = [item for item in loaded if item[3] is None]
            outputs = iter(())
            if good:
                x = np.zeros((batch_size, size, size, 1), np.float32)
                x[:len(good), ..., 0] = np.stack([item[2] for item in good])
                probs, raw = jax.device_get(fn(run.variables, x))
                finished = pool.map(lambda i: map_to_image(raw[i], *good[i][1].shape, size=size, mode=mode),
                                    range(len(good)))
                outputs = zip(probs.tolist(), finished)
            for path, image, _, error in loaded:
                if error is not None:
                    yield Result(str(path), error=error)
                else:
                    p, saliency = next(outputs)
                    yield Result(str(path), probability=p, saliency=saliency, image=image)
