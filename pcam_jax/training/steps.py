"""One pure train step per stage, ``(state, batch[, labelled_batch]) -> (state, metrics)``.

The steps are not jitted here: the loop jits them with shardings and a donated state
(`pcam_jax.training.mesh.jit_train_step`). Each reads like DESIGN.md section 1:

- stage 1: ``L = L1``, cross-entropy of the plain pass (class-weighted when
  ``config.stage1.class_weighted``, with `losses.class_weights` of
  ``config.stage1.abnormal_fraction``);
- stage 2: ``L = (1 - lambda) L1 + lambda L2``: a plain pass in training mode gives L1 and the
  features; ``A`` = the abnormal positive CAM of those features with the current head kernel;
  the masked pass on ``I * T(A)`` (or ``I - I * T(A)``) in eval mode gives L2; lambda =
  ``exp(P - 1)``, stop-gradient;
- stage 3: stage 2's loss ``+ lambda' L3``, L3 = MSE of the decoder's map of the labelled batch.

Batches follow `pcam_jax.data` (image, label, mask, has_mask, valid); rows with
``valid == False`` count in no loss and no accuracy.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from pcam_jax.models import PCAMNet
from pcam_jax.training import losses
from pcam_jax.training.state import make_optimizer, update_accuracy_ema

STAGES = (1, 2, 3)
CONFIDENCE_SOURCES = ("ema", "validation")

TrainStep = Callable[..., tuple[dict, dict]]


def _variables(params: dict, batch_stats: dict) -> dict:
    return {"params": params, "batch_stats": batch_stats}


def attention_and_mask(features: jax.Array, params: dict, image_hw: tuple[int, int], stage2_config: Any):
    """``(A, T(A))`` for a batch of features, with the head kernel of ``params``: (B, H, W) each."""
    attention = losses.attention_map(features, params["head"]["dense"]["kernel"], image_hw,
                                     logit_difference=bool(stage2_config.logit_difference))
    return attention, losses.soft_mask(attention, float(stage2_config.omega), float(stage2_config.sigma))


def _check_config(stage: int, config: Any) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    s2 = config.stage2
    if s2.mask_mode not in losses.MASK_MODES:
        raise ValueError(f"config.stage2.mask_mode must be one of {losses.MASK_MODES}, got {s2.mask_mode!r}")
    if s2.confidence not in CONFIDENCE_SOURCES:
        raise ValueError(f"config.stage2.confidence must be one of {CONFIDENCE_SOURCES}, got {s2.confidence!r}")
    if not 0.0 <= float(s2.accuracy_ema) < 1.0:
        raise ValueError(f"config.stage2.accuracy_ema is a decay in [0, 1), got {s2.accuracy_ema!r}")
    lesion_loss = config.stage3.get("lesion_loss", "mse")
    if lesion_loss not in ("mse", "balanced_mse"):
        raise ValueError(f"config.stage3.lesion_loss must be 'mse' or 'balanced_mse', got {lesion_loss!r}")


def make_loss_fn(stage: int, config: Any, model: PCAMNet) -> Callable:
    """``loss_fn(params, state, batch, labelled_batch=None) -> (loss, aux)`` of ``stage``.

    ``aux``: ``batch_stats`` (after the plain pass), ``accuracy_ema`` (updated with this
    batch), ``metrics`` (``l1, l2, l3, accuracy, confidence, accuracy_ema``). The train step
    differentiates it with respect to ``params``; tests do too.
    """
    _check_config(stage, config)
    s2 = config.stage2
    weights = (losses.class_weights(config.stage1.abnormal_fraction)
               if stage == 1 and bool(config.stage1.class_weighted) else None)
    ema_decay = float(s2.accuracy_ema)
    mask_mode, abnormal_only = str(s2.mask_mode), bool(s2.abnormal_only)
    l3_weight = float(config.stage3.l3_weight) if stage == 3 else 0.0
    balanced_l3 = config.stage3.get("lesion_loss", "mse") == "balanced_mse"

    def loss_fn(params, state, batch, labelled_batch=None):
        images, labels, valid = batch["image"], batch["label"], batch["valid"]
        # Plain pass, training mode: batch statistics, running averages updated.
        (logits, features), updated = model.apply(_variables(params, state["batch_stats"]), images,
                                                  train=True, mutable=["batch_stats"])
        l1 = losses.cross_entropy(logits, labels, weights, valid)
        batch_accuracy = losses.accuracy(logits, labels, valid)
        accuracy_ema = update_accuracy_ema(state["confidence"]["accuracy_ema"], batch_accuracy,
                                           state["step"], ema_decay)
        p = accuracy_ema if s2.confidence == "ema" else state["confidence"]["val_accuracy"]
        lam = losses.confidence_weight(p)
        zero = jnp.zeros((), jnp.float32)
        l2 = l3 = zero
        if stage >= 2:
            # The mask is a differentiable function of the features and the head kernel:
            # no stop_gradient, L2 trains the map.
            _, mask = attention_and_mask(features, params, images.shape[1:3], s2)
            masked = losses.masked_images(images, mask, mask_mode)
            # Masked pass with the running statistics as they stood at the start of the step.
            masked_logits, _ = model.apply(_variables(params, state["batch_stats"]), masked, train=False)
            l2 = losses.attention_loss(masked_logits, labels, mask_mode, abnormal_only, valid)
        if stage == 3:
            # Training-mode pass (batch statistics) through encoder and decoder. Its running-average
            # update is dropped: the running statistics describe the training distribution, and the
            # labelled few (all abnormal) are not a sample of it.
            lesion_map, _ = model.apply(_variables(params, updated["batch_stats"]), labelled_batch["image"],
                                        train=True, method=PCAMNet.segment, mutable=["batch_stats"])
            l3 = losses.lesion_loss(lesion_map, labelled_batch["mask"],
                                    labelled_batch["has_mask"] & labelled_batch["valid"],
                                    balanced=balanced_l3)
        loss = l1 if stage == 1 else losses.stage_loss(l1, l2, l3, lam, l3_weight)
        aux = dict(batch_stats=updated["batch_stats"], accuracy_ema=accuracy_ema,
                   metrics=dict(l1=l1, l2=l2, l3=l3, accuracy=batch_accuracy, confidence=lam,
                                accuracy_ema=accuracy_ema))
        return loss, aux

    return loss_fn


def make_train_step(stage: int, config: Any, model: PCAMNet) -> TrainStep:
    """``train_step(state, batch, labelled_batch=None) -> (new_state, metrics)`` for ``stage``.

    ``labelled_batch`` (stage 3 only, required there) is a batch of the few images with
    lesion labels. The optimizer is ``make_optimizer(config, frozen_parts=...)``: the decoder
    is frozen in stages 1-2; its state has the structure `create_train_state` made.

    Metrics (float32 scalars, left on device): ``loss, l1, l2, l3, accuracy`` (of the plain
    pass on the valid rows), ``confidence`` (lambda; reported in stage 1 too, where the loss is
    L1 alone and l2 = l3 = 0), ``accuracy_ema``, ``grad_norm``, and
    ``nonfinite`` (1.0 when the loss or the gradient norm is NaN/Inf, else 0.0; the loop
    checks it at logging time, where it syncs anyway).
    """
    loss_fn = make_loss_fn(stage, config, model)
    optimizer = make_optimizer(config, frozen_parts=() if stage == 3 else ("decoder",))

    def train_step(state: dict, batch: dict, labelled_batch: dict | None = None) -> tuple[dict, dict]:
        if stage == 3 and labelled_batch is None:
            raise ValueError("the stage-3 train step needs labelled_batch (a batch of lesion-labelled images)")
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state, batch, labelled_batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": aux["batch_stats"],
            "opt_state": opt_state,
            "confidence": {"accuracy_ema": aux["accuracy_ema"],
                           "val_accuracy": state["confidence"]["val_accuracy"]},
        }
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics = dict(loss=loss, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32), **aux["metrics"])
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    return train_step


def make_eval_step(model: PCAMNet) -> Callable[[dict, dict], dict]:
    """``eval_step(state, batch) -> {"probs": (B,) abnormal probability, "logits": (B, 2)}``, eval mode."""

    def eval_step(state: dict, batch: dict) -> dict:
        logits, _ = model.apply(_variables(state["params"], state["batch_stats"]), batch["image"], train=False)
        logits = logits.astype(jnp.float32)
        return {"probs": jax.nn.softmax(logits, axis=-1)[:, losses.ABNORMAL], "logits": logits}

    return eval_step


def make_map_step(config: Any, model: PCAMNet) -> Callable[[dict, jax.Array], dict]:
    """``map_step(state, images) -> {"attention": A, "mask": T(A)}`` (B, H, W), eval mode.

    What stage 2 trains, for image summaries and figures.
    """

    def map_step(state: dict, images: jax.Array) -> dict:
        _, features = model.apply(_variables(state["params"], state["batch_stats"]), images, train=False)
        attention, mask = attention_and_mask(features, state["params"], images.shape[1:3], config.stage2)
        return {"attention": attention, "mask": mask}

    return map_step
