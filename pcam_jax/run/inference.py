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
  and the run's ``config.data.resize`` (`pcam_jax.geometry.to_model_size`), so a file is seen
  as in training;
* one jitted program per (batch size, method) returns the abnormal probability and the raw map
  of every image from a single forward (`make_predict_and_map_fn`);
* the map is post-processed to the file's size on the host (`map_to_image`: ReLU, min-max,
  bilinear resize, min-max: `pcam_jax.maps.postprocess`, with two gathered taps per axis).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import geometry, maps as maps_lib
from pcam_jax.models import ABNORMAL, PCAMNet, classifier_apply_fn, head_kernel, probability_of_abnormal


def _normalize(m: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """`pcam_jax.maps.normalize` of one map, on the host."""
    shifted = m - m.min()
    span = shifted.max()
    return shifted / (span + eps) if span > 0 else np.zeros_like(shifted)


def map_to_image(raw: np.ndarray, height: int, width: int, *, size: int, mode: str, eps: float = 1e-7) -> np.ndarray:
    """A raw map (h, w) of one image -> (height, width) in [0, 1], as `maps.postprocess` on the host.

    With ``pad`` the map is first brought to the model's input size and cut to the letterbox's
    content (`pcam_jax.geometry.crop_to_content`), so it lines up with the file's pixels."""
    m = _normalize(np.maximum(np.asarray(raw, np.float32), 0.0), eps)
    if mode == "pad":
        m = geometry.crop_to_content(geometry.resize_host(m, size, size), height, width, mode)
    return _normalize(geometry.resize_host(m, height, width), eps)


def make_predict_and_map_fn(model: PCAMNet, method: str, chunk: int = 32):
    """Jitted ``fn(variables, images (B, S, S, 1)) -> (p_abnormal (B,), raw maps)`` from one forward.

    Raw maps are (B, h, w) at feature resolution for the classifier methods (for the abnormal
    class) and (B, S, S) for the decoder and the pixel attributions; `map_to_image` finishes
    them per file.
    """
    maps_lib.registry.get(method)

    @jax.jit
    def fn(variables, images):
        targets = jnp.full((images.shape[0],), ABNORMAL, jnp.int32)
        logits, found = maps_lib.maps_and_logits(
            classifier_apply_fn(model, variables), head_kernel(variables["params"]), images, targets, (method,),
            chunk, segment_fn=lambda x: model.apply(variables, x, method=PCAMNet.segment))
        return probability_of_abnormal(logits), found[method]  # the maps' own forward: no second pass

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
    return path, image, geometry.to_model_size(image, size, mode), None


def predict_files(run, paths: Iterable, *, method: str = "positive_cam", batch_size: int = 16,
                  workers: int | None = None) -> Iterator[Result]:
    """`Result` per path, in order: reading runs on ``workers`` threads a batch ahead of the
    device, every full batch is one call of `make_predict_and_map_fn` (the last one padded)."""
    fn = run.predict_and_map_function(method)  # checks the method against the run's stage
    size, mode = run.image_size, run.resize_mode
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
