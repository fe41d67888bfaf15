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
import os
import pathlib
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import maps
from pcam_jax.models import head_kernel
from pcam_jax.maps.overlays import overlay_batch
from pcam_jax.training import stages as stages_lib


def summary_maps(model, variables: dict, images: jax.Array, *, stage: stages_lib.Stage,
                 logit_difference: bool = False) -> dict[str, jax.Array]:
    """Maps (B, H, W) in [0, 1] shown in TensorBoard: the abnormal positive CAM (stage 2's
    attention ``A``) and, in a stage that trains the decoder, its lesion map. Eval mode.

    Args:
      variables: {"params", "batch_stats"}. images: (B, H, W, 1) in [0, 1].
    """
    if stage.trains_decoder:
        _, features, lesion = model.apply(variables, images, train=False, method=type(model).classify_and_segment)
    else:
        _, features = model.apply(variables, images, train=False)
        lesion = None
    out = {"positive_cam": maps.attention_map(features, head_kernel(variables["params"]), images.shape[1:3],
                                              logit_difference)}
    if lesion is not None:
        out["decoder"] = lesion
    return out


def mean_metrics(records: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each scalar over a logging interval (keys of the first record)."""
    return {k: float(np.mean([r[k] for r in records])) for k in records[0]}


def drop_records_after(jsonl_path: pathlib.Path, stage: int, step: int) -> int:
    """Removes the records of ``stage`` with a step above ``step`` from a metrics.jsonl (kept in
    order, rewritten atomically); returns how many were removed. A line that is not JSON (a
    write cut short by a kill) is dropped too."""
    if not jsonl_path.is_file():
        return 0
    kept, removed = [], 0
    for line in jsonl_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            removed += 1
            continue
        if record.get("stage") == stage and int(record.get("step", 0)) > step:
            removed += 1
        else:
            kept.append(line)
    if removed:
        partial = jsonl_path.with_name(jsonl_path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in kept))
        os.replace(partial, jsonl_path)
    return removed


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
        """A stage (re)starts at ``initial_step``: records of its later steps in metrics.jsonl
        are from a run that was cut short and are dropped, so each step is logged once."""
        self._stage = stage
        if self.enabled:
            drop_records_after(self.jsonl_path, stage, initial_step)
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
        summary = ", ".join(f"{k} {_format(metrics[k])}" for k in ("accuracy", "auroc", "cohen_kappa", "heldout_pxap") if k in metrics)
        self.message(f"stage {self._stage} epoch {epoch} (step {step}): {split} {summary}")

    def log_images(self, step: int, images: np.ndarray, maps: Mapping[str, np.ndarray]) -> None:
        """Overlays of each map on the images under ``stage{N}/maps/{name}``."""
        if not (self.enabled and self._writer is not None):
            return
        for name, values in maps.items():
            self._writer.image(f"stage{self._stage}/maps/{name}", overlay_batch(images, values), step,
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


def jit_summary_maps(model, *, stage: stages_lib.Stage, logit_difference: bool = False):
    """`summary_maps` jitted for one stage: ``fn(variables, images) -> {name: (B, H, W)}``."""
    return jax.jit(lambda variables, images: summary_maps(
        model, variables, jnp.asarray(images), stage=stage, logit_difference=logit_difference))
