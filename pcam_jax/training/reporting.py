"""What a training run tells its user: a progress bar, JSON lines, TensorBoard scalars and maps.

Everything goes through one `Reporter`; on processes other than 0 it is silent (no bar, no
files), so the loop calls it unconditionally. Files under the work directory::

    <workdir>/metrics.jsonl     one JSON object per line: {"stage", "step", "split", ...metrics}
                                split "train" (averaged over a logging interval) or
                                "model_selection" (an evaluation, with "epoch")
    <workdir>/tensorboard/      event files; tags "stage{N}/train/loss", "stage{N}/model_selection/auroc",
                                images "stage{N}/maps/positive_cam" (and "decoder" in stage 3)
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.training import losses


def attention_maps(model, variables: dict, images: jax.Array, *, stage: int, logit_difference: bool = False
                   ) -> dict[str, jax.Array]:
    """Maps (B, H, W) in [0, 1] shown in TensorBoard: the abnormal positive CAM (stage 2's
    attention ``A``) and, in stage 3, the decoder's lesion map. Eval mode (running BN stats).

    Args:
      variables: {"params", "batch_stats"}. images: (B, H, W, 1) in [0, 1].
    """
    if stage == 3:
        _, features, lesion = model.apply(variables, images, train=False, method=type(model).classify_and_segment)
    else:
        _, features = model.apply(variables, images, train=False)
        lesion = None
    kernel = variables["params"]["head"]["dense"]["kernel"]
    maps = {"positive_cam": losses.attention_map(features, kernel, images.shape[1:3], logit_difference)}
    if lesion is not None:
        maps["decoder"] = lesion
    return maps


def overlay(images: np.ndarray, maps: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """Heat maps blended over grayscale images: (B, H, W, 1) and (B, H, W) in [0, 1] -> uint8 (B, H, W, 3)."""
    import matplotlib

    gray = np.repeat(np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0, 1)[..., :1], 3, axis=-1)
    heat = matplotlib.colormaps[colormap](np.clip(np.nan_to_num(np.asarray(maps, np.float32)), 0, 1))[..., :3]
    return np.round(255 * ((1 - alpha) * gray + alpha * heat)).astype(np.uint8)


def mean_metrics(records: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each scalar over a logging interval (keys of the first record)."""
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class Reporter:
    """Progress bar + JSON lines + TensorBoard for one run; a no-op where ``enabled`` is False.

    ``progress(...)`` is called every step (host-only work, no device sync); the ``log_*``
    methods at logging intervals with values already on the host.
    """

    def __init__(self, workdir, *, enabled: bool | None = None, tensorboard: bool = True,
                 progress_bar: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = pathlib.Path(workdir)
        self._bar = None
        self._writer = None
        self._show_bar = progress_bar
        self._stage = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.workdir / "metrics.jsonl"
        if tensorboard:
            from flax.metrics import tensorboard as flax_tensorboard  # imports TensorFlow: only when used

            self._writer = flax_tensorboard.SummaryWriter(str(self.workdir / "tensorboard"), auto_flush=False)

    # -- progress bar -----------------------------------------------------------------------
    def start_stage(self, stage: int, *, initial_step: int, total_steps: int) -> None:
        self._stage = stage
        if not (self.enabled and self._show_bar):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=initial_step, desc=f"stage {stage}", unit="step",
                         dynamic_ncols=True, leave=True)

    def progress(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def end_stage(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.flush()

    # -- records ------------------------------------------------------------------------------
    def _write_json(self, record: dict) -> None:
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_train(self, step: int, metrics: Mapping[str, float]) -> None:
        """Metrics averaged over a logging interval (loss, accuracy, confidence, images_per_second...)."""
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self._write_json({"stage": self._stage, "step": int(step), "split": "train", "time": time.time(), **metrics})
        for name, value in metrics.items():
            if self._writer is not None and math.isfinite(value):
                self._writer.scalar(f"stage{self._stage}/train/{name}", value, step)
        if self._bar is not None:
            shown = {"loss": "loss", "accuracy": "acc", "confidence": "lambda", "images_per_second": "img/s"}
            self._bar.set_postfix({short: _format(metrics[k]) for k, short in shown.items() if k in metrics},
                                  refresh=False)

    def log_eval(self, step: int, epoch: int, metrics: Mapping[str, float], split: str = "model_selection") -> None:
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        self._write_json({"stage": self._stage, "step": int(step), "epoch": int(epoch), "split": split,
                          "time": time.time(), **metrics})
        if self._writer is not None:
            for name, value in metrics.items():
                if math.isfinite(value):
                    self._writer.scalar(f"stage{self._stage}/{split}/{name}", value, step)
            self._writer.flush()
        summary = ", ".join(f"{k} {_format(metrics[k])}" for k in ("accuracy", "auroc", "cohen_kappa") if k in metrics)
        self.message(f"stage {self._stage} epoch {epoch} (step {step}): {split} {summary}")

    def log_images(self, step: int, images: np.ndarray, maps: Mapping[str, np.ndarray]) -> None:
        """Overlays of each map on the images under ``stage{N}/maps/{name}``."""
        if not (self.enabled and self._writer is not None):
            return
        for name, values in maps.items():
            self._writer.image(f"stage{self._stage}/maps/{name}", overlay(images, values), step,
                               max_outputs=len(images))

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        self.end_stage()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def jit_attention_maps(model, *, stage: int, logit_difference: bool = False):
    """`attention_maps` jitted for one stage: ``fn(variables, images) -> {name: (B, H, W)}``."""
    return jax.jit(lambda variables, images: attention_maps(
        model, variables, jnp.asarray(images), stage=stage, logit_difference=logit_difference))
