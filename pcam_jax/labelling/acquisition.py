"""Acquisition functions: which unlabelled abnormal images a clinician should label first.

Pure, batched functions (arrays in, arrays out, jit-able) and `make_score_fn`, which jits one of
them together with the model's forward and maps (`pcam_jax.maps.make_all_maps_fn`: any method of
the map registry, one forward and one VJP for all the gradient maps asked for). A higher score
means "label me sooner".

    random            a seeded uniform score: the baseline every other function must beat
    uncertainty       binary entropy of P(abnormal): the classifier is unsure of the image
    map_entropy       entropy of the normalised map (as a distribution over pixels), divided by
                      log(pixels): 1 for a flat map (the model does not know where), 0 for one hot pixel
    map_disagreement  1 - mean pairwise Pearson correlation between the maps of several methods
                      (default: the registry's cheap classifier maps, those of Figure 2: CAM,
                      positive CAM, Grad-CAM): they disagree on where
    tta               the same disagreement between one method's maps of test-time-augmented views
                      (identity, horizontal flip, +-d pixel shifts), each mapped back to the image
                      frame: MONAI Label's epistemic scoring without dropout (our network has none)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

ACQUISITIONS = ("random", "uncertainty", "map_entropy", "map_disagreement", "tta")


def binary_entropy(p):
    """Entropy of Bernoulli(p) in bits, (B,) -> (B,): 1 at p = 0.5, 0 at p in {0, 1}."""
    p = jnp.clip(p, 0.0, 1.0)
    return -(xlogy(p, p) + xlogy(1.0 - p, 1.0 - p)) / jnp.log(2.0)  # xlogy: 0 log 0 = 0


def map_entropy(maps):
    """(B, H, W) non-negative maps -> (B,) entropy of m / sum(m) over pixels, divided by log(H*W).

    An all-zero map (nothing highlighted) counts as flat: entropy 1."""
    flat = maps.reshape(maps.shape[0], -1)
    total = flat.sum(axis=1, keepdims=True)
    q = jnp.where(total > 0, flat / jnp.where(total > 0, total, 1.0), 1.0 / flat.shape[1])
    h = -jnp.sum(xlogy(q, q), axis=1)
    return h / jnp.log(flat.shape[1])


def disagreement(maps):
    """(K, B, H, W) -> (B,): 1 - mean Pearson correlation over the K*(K-1)/2 pairs of maps.

    A constant map correlates 0 with anything (it says nothing about where). Range [0, 2]."""
    k = maps.shape[0]
    if k < 2:
        raise ValueError(f"disagreement needs at least two maps per image, got {k}")
    flat = maps.reshape(k, maps.shape[1], -1)
    centred = flat - flat.mean(axis=2, keepdims=True)
    norm = jnp.sqrt(jnp.sum(centred ** 2, axis=2, keepdims=True))
    unit = jnp.where(norm > 0, centred / jnp.where(norm > 0, norm, 1.0), 0.0)
    corr = jnp.einsum("ibn,jbn->bij", unit, unit)  # (B, K, K)
    upper = np.triu(np.ones((k, k), bool), 1)
    return 1.0 - jnp.sum(jnp.where(upper, corr, 0.0), axis=(1, 2)) / upper.sum()


def shift(images, dy: int, dx: int):
    """(B, H, W[, C]) moved by (dy, dx) pixels, the border repeated into the gap."""
    h, w = images.shape[1], images.shape[2]
    pad = [(0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))] + [(0, 0)] * (images.ndim - 3)
    padded = jnp.pad(images, pad, mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[:, top:top + h, left:left + w]


def tta_transforms(d: int):
    """[(forward, inverse)] on (B, H, W[, C]) arrays: identity, horizontal flip, shifts by +-d.

    ``inverse(forward(x)) == x`` except on the d-pixel border a shift loses."""
    flip = lambda x: jnp.flip(x, axis=2)  # noqa: E731
    ident = lambda x: x  # noqa: E731
    return [(ident, ident), (flip, flip),
            (functools.partial(shift, dy=d, dx=d), functools.partial(shift, dy=-d, dx=-d)),
            (functools.partial(shift, dy=-d, dx=d), functools.partial(shift, dy=d, dx=-d))]


def disagreement_methods() -> tuple[str, ...]:
    """map_disagreement's default: the registry's Figure-2 classifier maps (one forward, one VJP)."""
    from pcam_jax.maps import registry

    return tuple(m for m in registry.FIGURE2_METHODS if m in registry.CLASSIFIER_METHODS)


def random_scores(n: int, seed: int) -> np.ndarray:
    """(n,) uniform scores in [0, 1) from ``seed``: the random baseline's ranking."""
    return np.random.default_rng(seed).random(n)


def make_score_fn(model, acquisition: str, *, methods=None, image_size: int, chunk: int = 32):
    """Jitted ``fn(variables, images (B, S, S, 1)) -> scores (B,)`` for a model-based acquisition.

    ``methods``: the map methods it reads (map_entropy, tta: the first one; map_disagreement: all,
    at least two). Maps are those of the abnormal class, post-processed as everywhere
    (`pcam_jax.maps.postprocess`: ReLU, min-max, bilinear to the image size).
    """
    from pcam_jax import maps as maps_lib
    from pcam_jax.models import ABNORMAL, probability_of_abnormal

    if acquisition not in ACQUISITIONS or acquisition == "random":
        raise ValueError(f"no model-based acquisition {acquisition!r}; choose from {ACQUISITIONS[1:]}")
    methods = tuple(methods or (disagreement_methods() if acquisition == "map_disagreement" else ("positive_cam",)))
    if acquisition != "map_disagreement":
        methods = methods[:1]
    elif len(methods) < 2:
        raise ValueError(f"map_disagreement compares two or more map methods; got {methods}")
    size = int(image_size)

    maps_fn = maps_lib.make_all_maps_fn(model, methods, chunk)  # the registry's methods, one forward

    def maps_of(variables, images):
        raw = maps_fn(variables, images, jnp.full((images.shape[0],), ABNORMAL, jnp.int32))
        return {m: maps_lib.postprocess(raw[m], size, size) for m in methods}

    @jax.jit
    def score(variables, images):
        if acquisition == "uncertainty":
            logits, _ = model.apply(variables, images, train=False)
            return binary_entropy(probability_of_abnormal(logits))
        if acquisition == "tta":
            transforms = tta_transforms(max(size // 16, 1))
            views = jnp.concatenate([forward(images) for forward, _ in transforms])
            found = maps_of(variables, views)
            per_view = found[methods[0]].reshape(len(transforms), images.shape[0], size, size)
            return disagreement(jnp.stack([inverse(m) for (_, inverse), m in zip(transforms, per_view)]))
        found = maps_of(variables, images)
        if acquisition == "map_entropy":
            return map_entropy(found[methods[0]])
        return disagreement(jnp.stack([found[m] for m in methods]))

    return score
