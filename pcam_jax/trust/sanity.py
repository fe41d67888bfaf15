"""Sanity checks for saliency maps (Adebayo et al., "Sanity checks for saliency maps", 2018).

A map that explains the model must change when the model does. Two checks:

- cascading model-parameter randomisation (`cascading_randomisation`): re-initialise the
  network from the top down, cumulatively: the classifier head, then the encoder blocks from
  the last to the first, then the stem (`randomisation_steps`); after each step recompute
  every method's maps and compare them with the trained model's. Similarity that stays high
  while the weights are noise means the map shows the image (edges, brightness), not what the
  model learnt: the method fails.
- random-logit test (`random_logit_test`): the map for another class (a random one; with two
  classes, the other) against the map for the target class. A class-discriminative map differs.

Similarity (`similarity`), per image, on maps post-processed as for evaluation
(`pcam_jax.maps.postprocess`: ReLU, per-image min-max, bilinear resize to the image, min-max),
so that every step's maps are normalised and resized the same way:
- Spearman rank correlation of the pixels (ties get average ranks, as scipy.stats.spearmanr);
  NaN when a map is constant (undefined, as in scipy). Adebayo et al. report it with and
  without the absolute value (a map that flips sign is still "the same" explanation), so both.
- SSIM (Wang et al. 2004): Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data
  range 1, the mean of the SSIM map over the windows that fit inside the image ("valid").

The similarity functions are pure and jit-able; the cascade stacks its S + 1 parameter sets
(step 0 = the trained model) on a leading axis and maps them through one `jax.lax.map`, so
`maps_fn` is traced once for every step. Results are plain dicts of numpy arrays.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pcam_jax import maps as saliency_maps

Array = jax.Array
MapsFn = Callable[..., Mapping[str, Array]]
Step = tuple[str, tuple[tuple[str, ...], ...]]  # (name, module paths under params/batch_stats)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03
_HIGHEST = jax.lax.Precision.HIGHEST
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


class SanityCheckError(ValueError):
    """Inputs the sanity checks cannot use (shapes, step names, classes)."""


# ---------------------------------------------------------------------------------------------
# Similarity of two batches of maps.


def average_ranks(values: Array) -> Array:
    """1-based ranks along the last axis, ties sharing their average rank (..., n) -> (..., n)."""

    def ranks_1d(x):
        order = jnp.sort(x)
        below = jnp.searchsorted(order, x, side="left")
        at_or_below = jnp.searchsorted(order, x, side="right")
        return (below + at_or_below + 1).astype(jnp.float32) / 2.0  # mean of ranks below+1 .. at_or_below

    flat = values.reshape(-1, values.shape[-1])
    return jax.vmap(ranks_1d)(flat).reshape(values.shape)


@jax.jit
def spearman(maps_a: Array, maps_b: Array) -> Array:
    """Spearman rank correlation per image of two map batches (B, H, W) -> (B,); NaN if one is constant."""
    _check_pair(maps_a, maps_b)
    batch = maps_a.shape[0]
    ranks_a = average_ranks(jnp.asarray(maps_a, jnp.float32).reshape(batch, -1))
    ranks_b = average_ranks(jnp.asarray(maps_b, jnp.float32).reshape(batch, -1))
    centred_a = ranks_a - ranks_a.mean(axis=1, keepdims=True)
    centred_b = ranks_b - ranks_b.mean(axis=1, keepdims=True)
    covariance = jnp.sum(centred_a * centred_b, axis=1)
    norms = jnp.sqrt(jnp.sum(centred_a**2, axis=1) * jnp.sum(centred_b**2, axis=1))
    return jnp.where(norms > 0, covariance / jnp.where(norms > 0, norms, 1.0), jnp.nan)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps (size,); the 2-D window is their outer product."""
    offsets = np.arange(size) - (size - 1) / 2.0
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _valid_filter_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """(n - size + 1, n) matrix whose row i applies the taps at positions i .. i + size - 1."""
    rows = n - taps.size + 1
    m = np.zeros((rows, n), np.float32)
    for i in range(rows):  # built once per shape, at trace time
        m[i, i:i + taps.size] = taps
    return m


@functools.partial(jax.jit, static_argnames=("window", "sigma"))
def ssim(maps_a: Array, maps_b: Array, data_range: float = 1.0, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> Array:
    """Mean SSIM per image of two map batches (B, H, W) -> (B,), Gaussian-weighted, valid windows.

    SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = data_range; local statistics are Gaussian-weighted
    means (population covariance, as Wang et al.). Two constant maps give 1 if equal.
    """
    _check_pair(maps_a, maps_b)
    height, width = maps_a.shape[1:]
    if height < window or width < window:
        raise SanityCheckError(
            f"SSIM needs maps of at least {window}x{window} pixels; got {height}x{width}. Post-process "
            "the maps to the image size first (pcam_jax.maps.postprocess).")
    taps = gaussian_window(window, sigma)
    rows = jnp.asarray(_valid_filter_matrix(height, taps))
    cols = jnp.asarray(_valid_filter_matrix(width, taps))
    blur = lambda x: jnp.einsum("Hh,bhw,Ww->bHW", rows, x, cols, precision=_HIGHEST)
    a = jnp.asarray(maps_a, jnp.float32)
    b = jnp.asarray(maps_b, jnp.float32)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    covariance = blur(a * b) - mu_a * mu_b
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(axis=(1, 2))


@jax.jit
def similarity(reference: Array, maps: Array) -> dict[str, Array]:
    """{"spearman", "abs_spearman", "ssim"}: each (..., B) for maps (..., B, H, W) against
    reference maps (B, H, W) broadcast over the leading axes. Both already post-processed."""
    reference = jnp.asarray(reference)
    maps = jnp.asarray(maps)
    lead = maps.shape[:-3]
    flat = maps.reshape(-1, *maps.shape[-3:])
    tiled = jnp.broadcast_to(reference, flat.shape)
    batch = flat.shape[0] * flat.shape[1]
    flat_maps, flat_reference = flat.reshape(batch, *maps.shape[-2:]), tiled.reshape(batch, *maps.shape[-2:])
    rho = spearman(flat_reference, flat_maps).reshape(*lead, maps.shape[-3])
    structural = ssim(flat_reference, flat_maps).reshape(*lead, maps.shape[-3])
    return {"spearman": rho, "abs_spearman": jnp.abs(rho), "ssim": structural}


def _check_pair(maps_a, maps_b) -> None:
    if maps_a.ndim != 3 or maps_a.shape != maps_b.shape:
        raise SanityCheckError(
            f"expected two map batches (B, H, W) of one shape; got {maps_a.shape} and {maps_b.shape}.")


# ---------------------------------------------------------------------------------------------
# Cascading randomisation.


def randomisation_steps(params: Mapping) -> list[Step]:
    """Top-down steps for a `pcam_jax.models.PCAMNet` parameter tree {"encoder", "head", ...}.

    [("head", (("head",),)), ("stageS_blockB", (("encoder", "stageS_blockB"),)), ... down to
    stage1_block1, ("stem", the encoder's remaining modules)]. The decoder is never randomised:
    the classifier's maps do not read it.
    """
    if "encoder" not in params or "head" not in params:
        raise SanityCheckError(f"params must have 'encoder' and 'head' (a PCAMNet tree); got keys {sorted(params)}.")
    blocks = sorted((name for name in params["encoder"] if _BLOCK.match(name)),
                    key=lambda name: tuple(int(g) for g in _BLOCK.match(name).groups()), reverse=True)
    stem = tuple(("encoder", name) for name in sorted(params["encoder"]) if not _BLOCK.match(name))
    steps: list[Step] = [("head", (("head",),))]
    steps += [(name, (("encoder", name),)) for name in blocks]
    if stem:
        steps.append(("stem", stem))
    return steps


def cascade_variables(variables: Mapping, fresh_variables: Mapping, steps: Sequence[Step],
                      randomise_batch_stats: bool = True) -> dict:
    """The S + 1 variable sets of the cascade, stacked on a new leading axis of every leaf.

    Index 0 is `variables`; index s has the modules of steps 1..s taken from `fresh_variables`
    (same structure, another init key). With `randomise_batch_stats`, a re-initialised module
    also gets its fresh BatchNorm statistics (a fresh init of the whole module).
    """
    flat = traverse_util.flatten_dict(dict(variables))
    fresh = traverse_util.flatten_dict(dict(fresh_variables))
    if set(flat) != set(fresh):
        raise SanityCheckError("fresh_variables must have the structure of variables: init the same model "
                               "(pcam_jax.models.init_variables) with another key and the same image size.")
    known = {path[1:len(prefix) + 1] for path in flat for _, prefixes in steps for prefix in prefixes}
    for name, prefixes in steps:
        for prefix in prefixes:
            if tuple(prefix) not in known:
                raise SanityCheckError(f"randomisation step {name!r}: no parameters under {'/'.join(prefix)}.")
    stacked = {}
    for path, leaf in flat.items():
        collection, module_path = path[0], path[1:]
        first = next((s + 1 for s, (_, prefixes) in enumerate(steps)
                      if any(module_path[:len(p)] == tuple(p) for p in prefixes)), None)
        if collection != "params" and not randomise_batch_stats:
            first = None
        replaced = np.arange(len(steps) + 1) >= (first if first is not None else len(steps) + 1)
        original, new = np.asarray(leaf), np.asarray(fresh[path])
        # Host-side once per check (a few MB): one program per leaf on the device would cost more.
        stacked[path] = jnp.asarray(np.where(replaced.reshape((-1,) + (1,) * original.ndim), new[None], original[None]))
    return traverse_util.unflatten_dict(stacked)


def _postprocessed(maps_fn: MapsFn, variables, images, targets) -> dict[str, Array]:
    raw = maps_fn(variables, images) if targets is None else maps_fn(variables, images, targets)
    height, width = images.shape[1:3]
    return {method: saliency_maps.postprocess(m, height, width) for method, m in raw.items()}


@functools.partial(jax.jit, static_argnums=0)
def _cascade_program(maps_fn: MapsFn, stacked_variables, batch, chosen):
    """Every step's maps (a `lax.map` over the stacked variable sets) and their similarity to
    step 0. Module-level with ``maps_fn`` static: one compilation per maps function and shape,
    reused by later checks (a closure jitted per call would recompile every time)."""
    per_step = jax.lax.map(lambda v: _postprocessed(maps_fn, v, batch, chosen), stacked_variables)
    return per_step, {method: similarity(m[0], m) for method, m in per_step.items()}


def cascading_randomisation(maps_fn: MapsFn, variables: Mapping, fresh_variables: Mapping, images,
                            targets=None, steps: Sequence[Step] | None = None,
                            randomise_batch_stats: bool = True) -> dict:
    """Maps and their similarity to the trained model's as the model is randomised top down.

    Args:
      maps_fn: ``maps_fn(variables, images[, targets]) -> {method: (B, h, w)}``, e.g.
        ``pcam_jax.maps.make_all_maps_fn(model, methods)``. Pass `targets` (the labels, or the
        trained model's predictions) so every step explains the same class, as Adebayo et al.;
        without them each randomised model explains its own predicted class.
      variables: the trained model's {"params", "batch_stats"}.
      fresh_variables: a fresh init of the same model (`pcam_jax.models.init_variables`, another key).
      images: (B, H, W, C) in [0, 1]; targets: (B,) int or None.
      steps: randomisation steps, default `randomisation_steps(variables["params"])`.

    Returns:
      {"steps": ["original", step names...] (S + 1), "maps": {method: (S + 1, B, H, W)},
       "spearman", "abs_spearman", "ssim": {method: (S + 1, B)}} as numpy; row 0 compares the
      trained model with itself (1, or NaN for a constant map).
    """
    steps = list(randomisation_steps(variables["params"]) if steps is None else steps)
    stacked = cascade_variables(variables, fresh_variables, steps, randomise_batch_stats)
    images = jnp.asarray(images)
    targets = None if targets is None else jnp.asarray(targets)
    per_step, scores = _cascade_program(maps_fn, stacked, images, targets)
    result = {"steps": ["original"] + [name for name, _ in steps],
              "maps": {method: np.asarray(m) for method, m in per_step.items()}}
    for metric in ("spearman", "abs_spearman", "ssim"):
        result[metric] = {method: np.asarray(s[metric]) for method, s in scores.items()}
    return result


def cascade_verdict(result: Mapping, metric: str = "ssim", max_similarity: float = 0.5) -> dict:
    """Per method: mean similarity per step (S + 1,) and whether it passes.

    A method passes when the mean `metric` over images at the last step (everything
    randomised) is below `max_similarity`; a map that ignores the model stays near 1 and fails.
    """
    if metric not in ("spearman", "abs_spearman", "ssim"):
        raise SanityCheckError(f"metric must be 'spearman', 'abs_spearman' or 'ssim'; got {metric!r}.")
    verdict = {}
    for method, values in result[metric].items():
        mean = np.nanmean(np.asarray(values, np.float64), axis=-1)
        verdict[method] = {"mean_per_step": mean, "final": float(mean[-1]),
                           "passes": bool(mean[-1] < max_similarity)}
    return verdict


# ---------------------------------------------------------------------------------------------
# Random-logit test.


def other_classes(key: Array, targets: Array, num_classes: int) -> Array:
    """A uniformly random class != target per image (B,); with two classes, the other one."""
    if num_classes < 2:
        raise SanityCheckError(f"the random-logit test needs at least 2 classes; got {num_classes}.")
    shift = jax.random.randint(key, jnp.shape(targets), 1, num_classes)
    return (jnp.asarray(targets) + shift) % num_classes


@functools.partial(jax.jit, static_argnums=0)
def _random_logit_program(maps_fn: MapsFn, model_variables, batch, chosen, other):
    """Maps for the target and the other class, and their similarity (variables as an argument:
    never fold the network; module-level so that it compiles once per maps function and shape)."""
    target_maps = _postprocessed(maps_fn, model_variables, batch, chosen)
    other_maps = _postprocessed(maps_fn, model_variables, batch, other)
    both = {m: jnp.stack([target_maps[m], other_maps[m]]) for m in target_maps}
    return both, {m: similarity(target_maps[m], other_maps[m]) for m in target_maps}


def random_logit_test(maps_fn: MapsFn, variables: Mapping, images, targets, num_classes: int,
                      key: Array) -> dict:
    """Similarity of each method's map for a random other class to its map for the target class.

    ``maps_fn(variables, images, targets) -> {method: (B, h, w)}`` (e.g. `make_all_maps_fn`).

    Returns:
      {"other_classes": (B,), "maps": {method: (2, B, H, W)} (target, other),
       "spearman", "abs_spearman", "ssim": {method: (B,)}} as numpy.
    """
    others = other_classes(key, jnp.asarray(targets), num_classes)
    both, scores = _random_logit_program(maps_fn, variables, jnp.asarray(images), jnp.asarray(targets), others)
    result = {"other_classes": np.asarray(others), "maps": {m: np.asarray(v) for m, v in both.items()}}
    for metric in ("spearman", "abs_spearman", "ssim"):
        result[metric] = {m: np.asarray(s[metric]) for m, s in scores.items()}
    return result
