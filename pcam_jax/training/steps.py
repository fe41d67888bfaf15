"""One pure train step per stage, ``(state, batch[, labelled_batch]) -> (state, metrics)``.

The steps are not jitted here: the loop jits them with shardings and a donated state
(`pcam_jax.training.mesh.jit_train_step`). What a stage optimises comes from its entry in
`pcam_jax.training.stages`; the terms, as in docs/METHOD.md section 1:

- L1: cross-entropy of the plain pass (class-weighted when the stage has
  ``class_weighted_l1`` and ``config.stage1.class_weighted``, with `losses.class_weights` of
  ``config.stage1.abnormal_fraction``);
- L2: ``A`` = the abnormal positive CAM of the plain pass's features with the current head
  kernel (`pcam_jax.maps.attention_map`); the masked pass on ``I * T(A)`` (or
  ``I - I * T(A)``) in eval mode gives L2; lambda = ``exp(P - 1)``, stop-gradient;
- L3: MSE of the decoder's map of the labelled batch.

A stage with L1 alone minimises L1; the others ``(1 - lambda) L1 + lambda L2 + lambda' L3``.

Batches follow `pcam_jax.data` (image, label, mask, has_mask, valid); rows with
``valid == False`` count in no loss and no accuracy.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from pcam_jax import maps
from pcam_jax.data import device_augment
from pcam_jax.models import PCAMNet, abnormal_probability, head_kernel
from pcam_jax.training import losses, stages as stages_lib
from pcam_jax.training.state import make_optimizer, update_accuracy_ema

CONFIDENCE_SOURCES = ("ema", "validation")
ATTENTION_CLASSES = ("abnormal", "label")   # config.stage2.attention_class
MASKED_BATCH_NORM = ("running", "batch")    # config.stage2.masked_batch_norm
# config.stage3.lesion_loss -> the `losses.lesion_loss` options it sets
LESION_LOSSES = {"mse": {}, "balanced_mse": {"balanced": True},
                 "balanced_bce": {"balanced": True, "cross_entropy": True},
                 "balanced_bce_dice": {"balanced": True, "cross_entropy": True, "dice": True}}

TrainStep = Callable[..., tuple[dict, dict]]


def _variables(params: dict, batch_stats: dict) -> dict:
    return {"params": params, "batch_stats": batch_stats}


def attention_and_mask(features: jax.Array, params: dict, image_hw: tuple[int, int], stage2_config: Any,
                       targets: jax.Array | None = None):
    """``(A, T(A))`` for a batch of features, with the head kernel of ``params``: (B, H, W) each.

    ``targets``: the class whose map each image gets (None: abnormal for all)."""
    attention = maps.attention_map(features, head_kernel(params), image_hw,
                                   logit_difference=bool(stage2_config.logit_difference), targets=targets)
    return attention, losses.soft_mask(attention, float(stage2_config.omega), float(stage2_config.sigma))


def check_config(config: Any) -> None:
    """Clear errors for stage settings no train step can use."""
    s2 = config.stage2
    losses.check_mask_mode(s2.mask_mode)
    if s2.confidence not in CONFIDENCE_SOURCES:
        raise ValueError(f"config.stage2.confidence must be one of {CONFIDENCE_SOURCES}, got {s2.confidence!r}")
    if s2.attention_class not in ATTENTION_CLASSES:
        raise ValueError(f"config.stage2.attention_class must be one of {ATTENTION_CLASSES}, "
                         f"got {s2.attention_class!r}")
    if s2.masked_batch_norm not in MASKED_BATCH_NORM:
        raise ValueError(f"config.stage2.masked_batch_norm must be one of {MASKED_BATCH_NORM}, "
                         f"got {s2.masked_batch_norm!r}")
    if not 0.0 <= float(s2.accuracy_ema) < 1.0:
        raise ValueError(f"config.stage2.accuracy_ema is a decay in [0, 1), got {s2.accuracy_ema!r}")
    if not 0.0 <= float(config.stage3.hard_background) <= 1.0:
        raise ValueError(f"config.stage3.hard_background is a share of the pixels in [0, 1], "
                         f"got {config.stage3.hard_background!r}")
    lesion_loss = config.stage3.lesion_loss
    if lesion_loss not in LESION_LOSSES:
        raise ValueError(f"config.stage3.lesion_loss must be one of {tuple(LESION_LOSSES)}, got {lesion_loss!r}")
    for spec in stages_lib.STAGES.values():
        spec.ranked_by_localisation(config)   # raises for a value outside stages.SELECT_BY


def make_loss_fn(stage: int | stages_lib.Stage, config: Any, model: PCAMNet) -> Callable:
    """``loss_fn(params, state, batch, labelled_batch=None) -> (loss, aux)`` of ``stage``.

    ``aux``: ``batch_stats`` (after the plain pass), ``accuracy_ema`` (updated with this
    batch), ``metrics`` (``l1, l2, l3, accuracy, confidence, accuracy_ema``). The train step
    differentiates it with respect to ``params``; tests do too.
    """
    stage = stage if isinstance(stage, stages_lib.Stage) else stages_lib.get(stage)
    check_config(config)
    s2 = config.stage2
    weights = (losses.class_weights(config.stage1.abnormal_fraction)
               if stage.class_weighted_l1 and bool(config.stage1.class_weighted) else None)
    ema_decay = float(s2.accuracy_ema)
    mask_mode, abnormal_only = str(s2.mask_mode), bool(s2.abnormal_only)
    l3_weight = float(config.stage3.l3_weight) if stage.uses("l3") else 0.0
    lesion_loss_options = LESION_LOSSES[config.stage3.lesion_loss]
    hard_background = float(config.stage3.hard_background)
    own_class_maps = s2.attention_class == "label"
    masked_batch_stats = s2.masked_batch_norm == "batch"

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
        if stage.uses("l2"):
            # The mask is a differentiable function of the features and the head kernel:
            # no stop_gradient, L2 trains the map.
            _, mask = attention_and_mask(features, params, images.shape[1:3], s2,
                                         targets=labels if own_class_maps else None)
            masked = losses.masked_images(images, mask, mask_mode)
            if masked_batch_stats:
                # Normalised by the masked batch's own statistics; their update is dropped
                # (masked images are not the distribution evaluation sees).
                (masked_logits, _), _ = model.apply(_variables(params, state["batch_stats"]), masked,
                                                    train=True, mutable=["batch_stats"])
            else:
                # Masked pass with the running statistics as they stood at the start of the step.
                masked_logits, _ = model.apply(_variables(params, state["batch_stats"]), masked, train=False)
            l2 = losses.attention_loss(masked_logits, labels, mask_mode, abnormal_only, valid)
        if stage.uses("l3"):
            # Training-mode pass (batch statistics) through encoder and decoder. Its running-average
            # update is dropped: the running statistics describe the training distribution, and the
            # labelled few (all abnormal) are not a sample of it.
            lesion_map, _ = model.apply(_variables(params, updated["batch_stats"]), labelled_batch["image"],
                                        train=True, method=PCAMNet.segment, mutable=["batch_stats"])
            l3 = losses.lesion_loss(lesion_map, labelled_batch["mask"],
                                    labelled_batch["has_mask"] & labelled_batch["valid"],
                                    hard_background=hard_background, **lesion_loss_options)
        if stage.losses == ("l1",):
            loss = l1
        elif stage.losses == ("l3",):  # the plain pass only keeps the BN statistics and metrics going
            loss = l3_weight * l3
        else:
            loss = losses.stage_loss(l1, l2, l3, lam, l3_weight)
        metrics = dict(l1=l1, l2=l2, l3=l3, accuracy=batch_accuracy, confidence=lam, accuracy_ema=accuracy_ema)
        if stage.uses("l3"):   # its largest output on the labelled rows: `guards.DeadDecoderGuard` reads it
            rows = (labelled_batch["has_mask"] & labelled_batch["valid"])[:, None, None]
            metrics["decoder_max"] = jnp.max(jnp.where(rows, lesion_map.astype(jnp.float32), 0.0))
        aux = dict(batch_stats=updated["batch_stats"], accuracy_ema=accuracy_ema, metrics=metrics)
        return loss, aux

    return loss_fn


def make_train_step(stage: int | stages_lib.Stage, config: Any, model: PCAMNet,
                    total_steps: int | None = None) -> TrainStep:
    """``train_step(state, batch, labelled_batch=None) -> (new_state, metrics)`` for ``stage``.

    ``labelled_batch`` (required by stages with ``needs_labelled``, stage 3) is a batch of the
    few images with lesion labels. The optimizer is ``make_optimizer(config, frozen_parts=...)``
    with the stage's frozen parts (the decoder in stages 1-2); its state has the structure
    `create_train_state` made; ``total_steps`` (the stage's) is what a "cosine" schedule decays over.

    Metrics (float32 scalars, left on device): ``loss, l1, l2, l3, accuracy`` (of the plain
    pass on the valid rows), ``confidence`` (lambda; reported in stage 1 too, where the loss is
    L1 alone and l2 = l3 = 0), ``accuracy_ema``, ``grad_norm``, and
    ``nonfinite`` (1.0 when the loss or the gradient norm is NaN/Inf, else 0.0; the loop
    checks it at logging time, where it syncs anyway).
    """
    stage = stage if isinstance(stage, stages_lib.Stage) else stages_lib.get(stage)
    loss_fn = make_loss_fn(stage, config, model)
    optimizer = make_optimizer(config, frozen_parts=stage.frozen_parts, total_steps=total_steps)
    # config.data.augment_on="device": uint8 batches, flipped/rotated/scaled here (None: host did it).
    augment = device_augment.make_train_augment(config, stage.number)

    def train_step(state: dict, batch: dict, labelled_batch: dict | None = None) -> tuple[dict, dict]:
        if stage.needs_labelled and labelled_batch is None:
            raise ValueError(f"the {stage.name} train step needs labelled_batch (a batch of lesion-labelled images)")
        if augment is not None:
            batch, labelled_batch = augment(state["step"], batch, labelled_batch)
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
        probs, logits = abnormal_probability(model, _variables(state["params"], state["batch_stats"]),
                                             batch["image"])
        return {"probs": probs, "logits": logits}

    return eval_step


def make_decoder_map_step(model: PCAMNet) -> Callable[[dict, dict], jax.Array]:
    """``decoder_map_step(state, batch) -> (B, S, S)``: the decoder's lesion map in eval mode,
    post-processed as `pcam-jax evaluate` scores it (`pcam_jax.maps.postprocess`: ReLU, min-max
    per image, at the image size); what stage 4's checkpoint is chosen on (`selection.heldout_pxap`)."""

    def decoder_map_step(state: dict, batch: dict) -> jax.Array:
        images = batch["image"]
        raw = model.apply(_variables(state["params"], state["batch_stats"]), images, method=PCAMNet.segment)
        return maps.postprocess(raw, images.shape[1], images.shape[2])

    return decoder_map_step
