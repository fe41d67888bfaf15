"""Faithfulness and sanity figures of one trained run's maps (`pcam_jax.run.analysis.Run`).

Used by `Run.faithfulness` / `Run.sanity` (the analysis API) and by `pcam-jax evaluate`
(`pcam_jax.evaluation.trust`, which averages them into the report). The metrics themselves
are pure functions in `pcam_jax.trust.faithfulness` and `pcam_jax.trust.sanity`; this module only binds
them to a run's network and variables, one jitted program per figure.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax import maps as maps_lib
from pcam_jax.trust import faithfulness, sanity
from pcam_jax.models import ABNORMAL, abnormal_probability, init_variables


def faithfulness_program(model, *, steps: int = 20, road_iterations: int = 100):
    """One jitted program (variables, images (N, S, S, 1), maps (N, S, S), key) -> {figure: (N,)}:
    deletion AUC (to 0), insertion AUC (onto the blurred image), ROAD MoRF / LeRF means and their
    combination, average drop / increase in confidence (percent), all for the abnormal class."""

    # Variables and images are arguments, never closed over: XLA would fold the whole network
    # on constant inputs at compile time (minutes).
    @jax.jit
    def figures(variables, x, saliency, key):
        prob_fn = lambda images: abnormal_probability(model, variables, images)[0]
        deletion = faithfulness.deletion_curve(prob_fn, x, saliency, num_steps=steps)
        insertion = faithfulness.insertion_curve(prob_fn, x, saliency, num_steps=steps)
        morf = faithfulness.road_curve(prob_fn, x, saliency, key, most_relevant_first=True,
                                       num_iterations=road_iterations)
        lerf = faithfulness.road_curve(prob_fn, x, saliency, key, most_relevant_first=False,
                                       num_iterations=road_iterations)
        change = faithfulness.confidence_change(prob_fn, x, saliency)
        return {"deletion_auc": faithfulness.area_under_curve(deletion),
                "insertion_auc": faithfulness.area_under_curve(insertion),
                "road_morf": jnp.mean(morf, axis=-1), "road_lerf": jnp.mean(lerf, axis=-1),
                "road_combined": faithfulness.road_combined(morf, lerf),
                "average_drop": 100.0 * change["drop"], "average_increase": 100.0 * change["increase"]}

    return figures


def faithfulness_figures(run, images: np.ndarray, maps: dict[str, np.ndarray], *, steps: int = 20,
                         road_iterations: int = 100, seed: int = 0, chunk: int | None = None,
                         program=None) -> dict[str, dict[str, np.ndarray]]:
    """{method: {figure: (N,) per image}} (`faithfulness_program`'s figures) for maps (N, S, S)
    in [0, 1] of images (N, S, S, 1), in chunks of ``chunk`` images (default: all at once;
    the last chunk is zero-padded, so one compilation serves every batch size)."""
    program = program or faithfulness_program(run.model, steps=steps, road_iterations=road_iterations)
    x = np.asarray(images, np.float32)
    chunk = max(1, int(chunk or len(x)))
    key = jax.random.key(seed)
    out = {}
    for method, m in maps.items():
        m = np.asarray(m, np.float32)
        parts = []
        for start in range(0, len(x), chunk):
            xs, ms = maps_lib.pad_batch(x[start:start + chunk], chunk), maps_lib.pad_batch(m[start:start + chunk], chunk)
            k = key if start == 0 else jax.random.fold_in(key, start)  # the first chunk's noise as unchunked
            got = jax.device_get(program(run.variables, jnp.asarray(xs), jnp.asarray(ms), k))
            parts.append({f: np.asarray(v, np.float64)[:len(x) - start] for f, v in got.items()})
        out[method] = {f: np.concatenate([p[f] for p in parts]) for f in (parts[0] if parts else {})}
    return out


def sanity_figures(run, images: np.ndarray, methods: tuple[str, ...], *, seed: int = 0) -> dict[str, Any]:
    """Cascading randomisation and random-logit test of the classifier maps ``methods``.

    Returns {"steps": [...], "cascade": {method: {"ssim": [per step], "spearman": [...],
    "passes": bool}}, "random_logit": {method: {"ssim", "spearman"}}, "maps": the cascade's
    maps {method: (S + 1, N, H, W)} for the figure}.
    """
    methods = tuple(m for m in methods if m in maps_lib.CLASSIFIER_METHODS)
    if not methods:
        return {}
    maps_fn = run.maps_function(methods)  # kept by the run: a second check does not recompile
    fresh = init_variables(run.model, jax.random.key(seed + 7919), run.image_size)
    x = jnp.asarray(images, jnp.float32)
    targets = jnp.full((len(images),), ABNORMAL, jnp.int32)  # every step explains the same class
    cascade = sanity.cascading_randomisation(maps_fn, run.variables, fresh, x, targets)
    verdict = sanity.cascade_verdict(cascade, "ssim")
    logit = sanity.random_logit_test(maps_fn, run.variables, x, targets, 2, jax.random.key(seed))

    def mean(a):  # over images; a constant map's similarity is NaN (no ranks): NaN if all are
        a = np.asarray(a, np.float64)
        counts = np.sum(np.isfinite(a), axis=-1)
        sums = np.sum(np.where(np.isfinite(a), a, 0.0), axis=-1)
        return [float(v) for v in np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(-1)]

    return {
        "steps": cascade["steps"],
        "cascade": {m: {"ssim": mean(cascade["ssim"][m]), "spearman": mean(cascade["spearman"][m]),
                        "passes": verdict[m]["passes"]} for m in methods},
        "random_logit": {m: {"ssim": mean(logit["ssim"][m])[0], "spearman": mean(logit["spearman"][m])[0]}
                         for m in methods},
        "maps": cascade["maps"],
    }
