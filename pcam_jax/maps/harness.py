"""Every map method for one batch, sharing the forward pass (and the VJP): `all_maps`.

`METHODS` names them all; `make_all_maps_fn` jits the harness for a `pcam_jax.models.PCAMNet`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from pcam_jax.maps import more_cams as more
from pcam_jax.maps.cams import (ApplyFn, Array, _resolve_targets, _weighted_sum, cam, forward_and_gradients,
                                grad_cam_from_gradients, grad_cam_pp_from_gradients, layer_cam_from_gradients,
                                positive_cam, score_cam_weights)

METHODS = ("cam", "positive_cam", "grad_cam", "grad_cam_pp", "layer_cam", "score_cam",
           "hires_cam", "xgrad_cam", "ablation_cam", "eigen_cam")
_GRADIENT_METHODS = ("grad_cam", "grad_cam_pp", "layer_cam", "hires_cam", "xgrad_cam")


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown map method(s) {unknown or methods!r}; choose from {METHODS}.")
    return methods


def all_maps(apply_fn: ApplyFn, weights: Array, images: Array, targets: Array | None = None,
             methods: Sequence[str] = METHODS, chunk: int = 32,
             head_fn: Callable[[Array], Array] | None = None) -> dict[str, Array]:
    """``{method: maps (B, h, w)}`` for every requested method, sharing one forward pass
    (`maps_and_logits` without the logits)."""
    return maps_and_logits(apply_fn, weights, images, targets, methods, chunk, head_fn)[1]


def maps_and_logits(apply_fn: ApplyFn, weights: Array, images: Array, targets: Array | None = None,
                    methods: Sequence[str] = METHODS, chunk: int = 32,
                    head_fn: Callable[[Array], Array] | None = None) -> tuple[Array, dict[str, Array]]:
    """``(logits (B, C), {method: maps (B, h, w)})`` for every requested method, sharing one forward
    pass, so a caller gets the prediction and the maps without a second pass (`pcam_jax.run.inference`).

    CAM, positive CAM, EigenCAM and the gradient methods come from a single forward (plus a
    single VJP when a gradient method is asked for); Score-CAM adds its masked forwards and
    AblationCAM its ablated heads (``head_fn``: features -> logits) or, without ``head_fn``,
    its ablated forwards. ``weights`` is the head's dense kernel (K, C). Trace it inside one
    ``jax.jit`` (see `make_all_maps_fn`). Targets None = predicted class, the same for every
    method.
    """
    methods = _check_methods(methods)
    if any(m in _GRADIENT_METHODS for m in methods):
        logits, features, grads, targets = forward_and_gradients(apply_fn, images, targets)
    else:
        logits, features = apply_fn(images)
        targets, grads = _resolve_targets(targets, logits), None
    compute = {
        "cam": lambda: cam(features, weights, targets),
        "positive_cam": lambda: positive_cam(features, weights, targets),
        "grad_cam": lambda: grad_cam_from_gradients(features, grads),
        "grad_cam_pp": lambda: grad_cam_pp_from_gradients(features, grads),
        "layer_cam": lambda: layer_cam_from_gradients(features, grads),
        "score_cam": lambda: jax.nn.relu(_weighted_sum(
            features, score_cam_weights(apply_fn, images, features, targets, chunk))),
        "hires_cam": lambda: more.hires_cam_from_gradients(features, grads),
        "xgrad_cam": lambda: more.xgrad_cam_from_gradients(features, grads),
        "ablation_cam": lambda: jax.nn.relu(_weighted_sum(features, more.ablation_cam_weights(
            apply_fn, images, features, logits, targets, chunk, head_fn))),
        "eigen_cam": lambda: more.eigen_cam_from_features(features),
    }
    return logits, {m: compute[m]() for m in methods}


def make_all_maps_fn(model, methods: Sequence[str] = METHODS, chunk: int = 32) -> Callable:
    """Jitted ``fn(variables, images, targets=None) -> {method: (B, h, w)}`` for a `PCAMNet`.

    Variables are an argument (not baked into the program), so one compilation serves every
    checkpoint of the same shapes. AblationCAM runs only the head on the ablated features.
    """
    from pcam_jax.models import classifier_apply_fn, head_kernel  # the network module is optional here

    methods = _check_methods(methods)

    @jax.jit
    def fn(variables: Mapping, images: Array, targets: Array | None = None):
        kernel = head_kernel(variables["params"])

        def head_fn(features):
            return model.apply(variables, features, method=lambda module, f: module.head(f))

        return all_maps(classifier_apply_fn(model, variables), kernel, images, targets, methods, chunk, head_fn)

    return fn


def pad_batch(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``n`` rows: fixed-size chunks, so one compiled program
    serves every batch size (the caller drops the padded rows' results)."""
    return np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)]) if len(a) < n else a
