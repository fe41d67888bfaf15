"""The analysis API: load a trained run, predict, and compute any map on your own images.

    import pcam_jax
    run = pcam_jax.load("work/demo", stage=3)
    probs = run.predict(images)                      # (B,) probability of "abnormal"
    maps = run.maps(images, method="positive_cam")   # (B, H, W) in [0, 1], at the input size
    faith = run.faithfulness(images, method="positive_cam")  # {"deletion_auc": (B,), "road_combined": ...}
    checks = run.sanity(images[:4], methods=("cam", "grad_cam"))  # cascading randomisation, random logit

Everything comes from the checkpoint in the work directory: the config (so the right network
is rebuilt), the parameters and the BatchNorm statistics. Images may be numpy or JAX arrays of
any batch size: (H, W), (B, H, W) or (B, H, W, C) with C in {1, 3}, uint8 in [0, 255] or float
in [0, 1], or one file path (PNG, 16-bit PNG, TIFF, DICOM: read by `pcam_jax.data.radiographs`).
They are brought to the training image size as the training pipeline brought its images, with
the run's own ``config.data.resize`` (``stretch`` or ``pad``: `pcam_jax.geometry`), run through
jitted functions in fixed-size chunks (so a new batch size never recompiles), and maps are
brought back onto the input images (a ``pad`` run's map is cut to the letterbox's content
first). Map post-processing follows pytorch-grad-cam: ReLU, per-image min-max to [0, 1],
bilinear resize. The methods are those of `pcam_jax.maps.registry`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import geometry, maps as maps_lib
from pcam_jax.models import abnormal_probability, create_model
from pcam_jax.training import stages as stages_lib


def read_if_path(images):
    """A file path (str or os.PathLike) -> float32 (H, W) in [0, 1], read right whatever it is
    (DICOM through its header, 16-bit PNG/TIFF by bit depth: `pcam_jax.data.radiographs`);
    anything else unchanged."""
    if isinstance(images, (str, os.PathLike)):
        from pcam_jax.data.radiographs import read_radiograph

        return read_radiograph(images)
    return images


def as_model_input(images, image_size: int, mode: str) -> np.ndarray:
    """Images of any accepted layout and dtype (or a file path) -> float32 (B, S, S, 1) in [0, 1],
    brought to the model's size as the training pipeline does with resize ``mode`` (`pcam_jax.geometry`)."""
    x = np.asarray(read_if_path(images))
    is_uint8 = x.dtype == np.uint8
    x = x.astype(np.float32) / 255.0 if is_uint8 else x.astype(np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (H, W), (B, H, W) or (B, H, W, C) with C in 1/3/4; got shape {x.shape}")
    if x.shape[-1] > 1:  # RGB(A) -> luminance, as PIL's "L" conversion
        x = (x[..., :3] @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    if not is_uint8 and x.size and (np.nanmin(x) < -1e-3 or np.nanmax(x) > 1.0 + 1e-3):
        raise ValueError("float images must be in [0, 1] (or pass uint8 in [0, 255]); "
                         f"got values in [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]")
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or Inf")
    if x.shape[1:3] != (image_size, image_size):
        x = np.stack([geometry.to_model_size(image, image_size, mode) for image in x[..., 0]])[..., None]
    return np.clip(x, 0.0, 1.0)


@dataclasses.dataclass
class Run:
    """A trained stage: its config, variables and jitted functions (see module docstring)."""

    config: Any
    variables: dict
    stage: int
    step: int
    chunk: int = 16
    selected_by: str = ""   # what picked this checkpoint, e.g. "auroc (max) on model_selection"

    def __post_init__(self):
        self.model = create_model(self.config.model)
        self.image_size = int(self.config.data.image_size)
        self.resize_mode = geometry.check_resize_mode(str(self.config.data.resize))
        model = self.model
        self._probs = jax.jit(lambda v, x: abnormal_probability(model, v, x)[0])
        # The run's compiled programs, each made once: one compilation per method set / setting.
        self._maps_fns = {}               # {method tuple: fn(variables, images, targets) -> {method: raw map}}
        self._predict_and_map_fns = {}    # {method: fn(variables, images) -> (P(abnormal), raw map)}: `inference`
        self._faithfulness_programs = {}  # {(steps, road_iterations): jitted figures program}

    def check_method(self, method: str) -> str:
        """``method`` if this run can make its map: a registry name, and the decoder only for a
        stage that trains it (a frozen decoder is random)."""
        if maps_lib.registry.get(method).needs_decoder and not stages_lib.get(self.stage).trains_decoder:
            trained = [n for n, s in stages_lib.STAGES.items() if s.trains_decoder]
            raise ValueError(f"the {method} map needs a run of stage {' or '.join(map(str, trained))}; "
                             f"this is stage {self.stage}")
        return method

    def maps_function(self, methods: tuple[str, ...]):
        """The jitted ``fn(variables, images, targets) -> {method: raw map}`` of ``methods``
        (`pcam_jax.maps.make_all_maps_fn`), made once per method set and kept."""
        methods = tuple(self.check_method(m) for m in maps_lib.registry.check(methods))
        if methods not in self._maps_fns:
            self._maps_fns[methods] = maps_lib.make_all_maps_fn(
                self.model, methods, chunk=int(self.config.eval.score_cam_chunk))
        return self._maps_fns[methods]

    def predict_and_map_function(self, method: str):
        """The jitted ``fn(variables, images) -> (P(abnormal), raw map)`` of ``method`` from one
        forward (`pcam_jax.run.inference.make_predict_and_map_fn`), made once and kept."""
        from pcam_jax.run import inference

        if method not in self._predict_and_map_fns:
            self._predict_and_map_fns[method] = inference.make_predict_and_map_fn(
                self.model, self.check_method(method), int(self.config.eval.score_cam_chunk))
        return self._predict_and_map_fns[method]

    def _chunks(self, x: np.ndarray):
        """Yields (padded chunk, number of real rows) in fixed-size chunks (one compilation)."""
        for start in range(0, len(x), self.chunk):
            part = x[start:start + self.chunk]
            yield maps_lib.pad_batch(part, self.chunk), len(part)

    def raw_maps(self, model_images: np.ndarray, methods=("positive_cam",), targets=None) -> dict[str, np.ndarray]:
        """{method: maps} for images already at the model's size, (B, S, S, 1) in [0, 1].

        CAMs are at feature resolution, as the map functions return them; the decoder and the
        pixel attributions at image resolution. Targets None: the abnormal class (1), the class
        whose lesion we want to see, for every image.
        """
        fn = self.maps_function(tuple(methods))
        out = {m: [] for m in methods}
        for start, (part, n) in zip(range(0, len(model_images), self.chunk), self._chunks(model_images)):
            t = (np.ones(len(part), np.int32) if targets is None
                 else maps_lib.pad_batch(np.asarray(targets, np.int32)[start:start + n], len(part)))
            result = fn(self.variables, part, t)
            for m in methods:
                out[m].append(np.asarray(result[m])[:n])
        return {m: np.concatenate(v) for m, v in out.items()}

    def faithfulness(self, images, method: str = "positive_cam", *, steps: int = 20,
                     road_iterations: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
        """How far the classifier's abnormal-class decision lives where ``method``'s map points.

        Images as for `maps`; the figures are computed at the model's input size, per image:
        {"deletion_auc" (pixels set to 0 most relevant first, ``steps`` steps; lower is more
        faithful), "insertion_auc" (restored onto a blurred image; higher), "road_morf",
        "road_lerf", "road_combined" ((LeRF - MoRF) / 2 with noisy linear imputation, ``road_iterations``
        conjugate-gradient iterations; higher), "average_drop", "average_increase" (percent)},
        each (B,). One jitted program per (method set, steps), in chunks of `chunk` images
        (`pcam_jax.trust.programs`, metrics in `pcam_jax.trust.faithfulness`).
        """
        from pcam_jax.trust import programs as map_trust

        x = as_model_input(images, self.image_size, self.resize_mode)
        raw = self.raw_maps(x, (method,))[method]
        saliency = np.asarray(maps_lib.postprocess(jnp.asarray(raw), self.image_size, self.image_size))
        key = (int(steps), int(road_iterations))
        if key not in self._faithfulness_programs:
            self._faithfulness_programs[key] = map_trust.faithfulness_program(
                self.model, steps=key[0], road_iterations=key[1])
        return map_trust.faithfulness_figures(self, x, {method: saliency}, seed=seed, chunk=self.chunk,
                                              program=self._faithfulness_programs[key])[method]

    def sanity(self, images, methods=None, *, seed: int = 0) -> dict:
        """Adebayo et al.'s sanity checks of classifier map ``methods`` on ``images`` (as for `maps`):
        cascading randomisation (head, then encoder blocks top down, re-initialised) and the
        random-logit test; ``methods`` default: the classifier maps of Figure 2. Returns {"steps", "cascade": {method: {"ssim": [per step], "spearman",
        "passes"}}, "random_logit": {method: {"ssim", "spearman"}}, "maps"} (`pcam_jax.trust.programs`)."""
        from pcam_jax.trust import programs as map_trust

        if methods is None:
            methods = tuple(m for m in maps_lib.FIGURE2_METHODS if m in maps_lib.CLASSIFIER_METHODS)
        unknown = [m for m in methods if m not in maps_lib.CLASSIFIER_METHODS]
        if unknown:
            raise ValueError(f"sanity checks are for classifier maps; unknown or not a classifier map: {unknown}; "
                             f"choose from {maps_lib.CLASSIFIER_METHODS}")
        return map_trust.sanity_figures(self, as_model_input(images, self.image_size, self.resize_mode),
                                        tuple(methods), seed=seed)

    def maps(self, images, method: str = "positive_cam", targets=None) -> np.ndarray:
        """(B, H, W) map in [0, 1] at the input images' size; see the module docstring."""
        images = read_if_path(images)
        x = as_model_input(images, self.image_size, self.resize_mode)
        raw = self.raw_maps(x, (method,), targets)[method]
        shape = np.asarray(images).shape
        height, width = (shape[0], shape[1]) if np.asarray(images).ndim == 2 else (shape[1], shape[2])
        if self.resize_mode == "pad":  # the map over the image, not over the letterbox's padding
            at_model_size = maps_lib.postprocess(jnp.asarray(raw), self.image_size, self.image_size)
            raw = geometry.crop_to_content(at_model_size, height, width, self.resize_mode)
        return np.asarray(maps_lib.postprocess(jnp.asarray(raw), height, width))

    def predict(self, images) -> np.ndarray:
        """Probability of the abnormal class, (B,)."""
        x = as_model_input(images, self.image_size, self.resize_mode)
        out = [np.asarray(self._probs(self.variables, part))[:n] for part, n in self._chunks(x)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


def load(workdir, stage: int = 3, which: str | int = "best") -> Run:
    """The trained `stage` of the run in `workdir` (best checkpoint by default), from its checkpoint alone."""
    from pcam_jax.training import checkpointing, selection

    config, variables, meta = checkpointing.restore_for_eval(workdir, stage, which)
    selected_by = (selection.describe(selection.recorded(meta)) if which == "best"
                   else f"--which {which}")
    return Run(config=config, variables=variables, stage=stage, step=int(meta.get("step", -1)),
               selected_by=selected_by)
