"""Every map method for one batch, sharing the forward pass (and the VJP): `all_maps`.

The methods are the entries of `pcam_jax.maps.registry`; `make_all_maps_fn` jits the harness
for a `pcam_jax.models.PCAMNet`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from pcam_jax.maps import registry
from pcam_jax.maps.cams import ApplyFn, Array, resolve_targets
from pcam_jax.maps.gradient_cams import forward_and_gradients


def all_maps(apply_fn: ApplyFn, weights: Array, images: Array, targets: Array | None = None,
             methods: Sequence[str] = registry.CAM_METHODS, chunk: int = 32,
             head_fn: Callable[[Array], Array] | None = None,
             segment_fn: Callable[[Array], Array] | None = None) -> dict[str, Array]:
    """``{method: maps (B, h, w)}`` for every requested method, sharing one forward pass
    (`maps_and_logits` without the logits)."""
    return maps_and_logits(apply_fn, weights, images, targets, methods, chunk, head_fn, segment_fn)[1]


def maps_and_logits(apply_fn: ApplyFn, weights: Array, images: Array, targets: Array | None = None,
                    methods: Sequence[str] = registry.CAM_METHODS, chunk: int = 32,
                    head_fn: Callable[[Array], Array] | None = None,
                    segment_fn: Callable[[Array], Array] | None = None) -> tuple[Array, dict[str, Array]]:
    """``(logits (B, C), {method: maps (B, h, w)})`` for every requested method, sharing one forward
    pass, so a caller gets the prediction and the maps without a second pass (`pcam_jax.run.inference`).

    CAM, positive CAM, EigenCAM and the gradient methods come from a single forward (plus a
    single VJP when a method `uses_gradients`); Score-CAM adds its masked forwards, AblationCAM
    its ablated heads (``head_fn``: features -> logits) or, without ``head_fn``, its ablated
    forwards, the pixel attributions their gradient passes (``chunk`` per batched call), the
    decoder ``segment_fn(images)``. ``weights`` is the head's dense kernel (K, C). Trace it
    inside one ``jax.jit`` (see `make_all_maps_fn`). Targets None = predicted class, the same
    for every method.
    """
    entries = [registry.get(m) for m in registry.check(methods)]
    if any(e.uses_gradients for e in entries):
        logits, features, grads, targets = forward_and_gradients(apply_fn, images, targets)
    else:
        logits, features = apply_fn(images)
        targets, grads = resolve_targets(targets, logits), None
    inputs = registry.Inputs(apply_fn, weights, images, logits, features, targets, grads, chunk, head_fn, segment_fn)
    return logits, {e.name: e.fn(inputs) for e in entries}


def make_all_maps_fn(model, methods: Sequence[str] = registry.CAM_METHODS, chunk: int = 32) -> Callable:
    """Jitted ``fn(variables, images, targets=None) -> {method: (B, h, w)}`` for a `PCAMNet`.

    Variables are an argument (not baked into the program), so one compilation serves every
    checkpoint of the same shapes. AblationCAM runs only the head on the ablated features; the
    decoder map is the model's ``segment``.
    """
    from pcam_jax.models import PCAMNet, classifier_apply_fn, head_kernel  # the network module is optional here

    methods = registry.check(methods)

    @jax.jit
    def fn(variables: Mapping, images: Array, targets: Array | None = None):
        kernel = head_kernel(variables["params"])

        def head_fn(features):
            return model.apply(variables, features, method=lambda module, f: module.head(f))

        def segment_fn(x):
            return model.apply(variables, x, method=PCAMNet.segment)

        return all_maps(classifier_apply_fn(model, variables), kernel, images, targets, methods, chunk, head_fn,
                        segment_fn)

    return fn


def pad_batch(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``n`` rows: fixed-size chunks, so one compiled program
    serves every batch size (the caller drops the padded rows' results)."""
    return np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)]) if len(a) < n else a
