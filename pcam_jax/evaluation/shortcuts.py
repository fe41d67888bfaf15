"""What does the classifier rely on? Counterfactual shortcut evaluation on synthetic radiographs.

`pcam_jax.data.synthetic.generate` draws anatomy, lesions, marker, hardware and noise from
independent random streams, so one limb index rendered with and without lesions is the same
limb, and forcing marker_prob / hardware_prob to 0 or 1 switches a confounder on or off
without moving a bone. We render `num_limbs` held-out limbs in all 8 cells

    (lesion no/yes) x (marker no/yes) x (hardware no/yes)        cell order: `CELLS`

and ask: does P(abnormal) follow the lesion when the confounders are held equal, and how
much does it move when only a confounder changes? Where does each map's arg-max land?

Held-out limbs have indices from `first_heldout_index(config.synthetic)` on: past every
split of `make_split_plan` (rounded up to a multiple of 1,000,000, so the same limbs are
used for every dataset size below that). Deterministic in (seed, index, generator settings).

Driver (works with `pcam_jax.run.analysis.Run` and with fakes)::

    run = pcam_jax.load(workdir, stage=1)
    methods = ("cam", "positive_cam")
    report = shortcut_report(run.predict,
                             lambda x: {m: run.maps(x, method=m) for m in methods},
                             run.config.synthetic, num_limbs=100)

Output keys of `shortcut_report` (all JSON-able; probabilities are P(abnormal)):
- ``num_limbs``, ``first_index``, ``image_size``, ``seed``, ``tolerance`` (pixels the masks
  grew by for the arg-max categories);
- ``mean_probability``: {cell name: mean P over its limbs}, cell names like
  ``"lesion=1,marker=0,hardware=0"``;
- ``lesion_auroc``: {``pooled``: AUROC lesion vs none over pairs from the same
  (marker, hardware) cell (Mann-Whitney pooled within strata), ``per_cell``:
  {``"marker=m,hardware=h"``: AUROC within that cell}};
- ``lesion_paired_win_rate``: share of (limb, cell) pairs whose lesion version scores above
  its own lesion-free version (ties 1/2);
- ``marker`` and ``hardware``, each: ``effect`` (mean over all matched pairs of P(on) -
  P(off), the other two factors held), ``effect_normal`` (same, lesion-free limbs only),
  ``auroc_normal`` (AUROC confounder on vs off on lesion-free limbs, pooled within the other
  confounder's strata), ``paired_win_rate_normal``;
- ``argmax`` (only when a maps callable is given): {method: {``all``: {category: share},
  ``per_cell``: {cell name: {category: share}}}}, categories `CATEGORIES`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np

from pcam_jax.data import synthetic
from pcam_jax.maps import registry
from pcam_jax.metrics.classification import auroc

FACTORS = ("lesion", "marker", "hardware")
CELLS = tuple(itertools.product((0, 1), repeat=3))  # (lesion, marker, hardware), lesion slowest
# Arg-max categories, in priority order: a pixel in several masks gets the first. The lesion
# comes first (it is what the map should find; metal already hides the lesion pixels beneath
# it), then metal (marker, hardware: drawn over everything), then bone, then the rest.
CATEGORIES = ("lesion", "marker", "hardware", "bone", "background")
_HELDOUT_MULTIPLE = 1_000_000


def cell_name(cell) -> str:
    return ",".join(f"{f}={int(v)}" for f, v in zip(FACTORS, cell))


def first_heldout_index(synthetic_config) -> int:
    """First limb index past every split of `synthetic_splits.make_split_plan`, rounded up to 10^6."""
    c = synthetic_config
    used = sum(int(c[f]) for f in ("num_train", "num_model_selection", "num_test", "num_heldout_labelled"))
    return max(1, -(-used // _HELDOUT_MULTIPLE)) * _HELDOUT_MULTIPLE


def render_counterfactuals(synthetic_config, num_limbs: int, first_index: int | None = None) -> dict:
    """The same `num_limbs` held-out limbs in every cell of `CELLS`.

    Uses the seed, image size and lesion settings of config.synthetic; marker and hardware are
    forced on or off. Returns {"image": uint8 (8, N, S, S), "lesion_mask", "marker_mask",
    "hardware_mask", "bone_mask": bool (8, N, S, S), "cells": int (8, 3), "index": (N,)}.
    """
    if num_limbs < 1:
        raise ValueError(f"num_limbs must be >= 1, got {num_limbs}")
    start = first_heldout_index(synthetic_config) if first_index is None else int(first_index)
    indices = np.arange(start, start + num_limbs)
    keys = ("image", "lesion_mask", "marker_mask", "hardware_mask", "bone_mask")
    out = {k: [] for k in keys}
    for lesion, marker, hardware in CELLS:
        rendered = [synthetic.generate_for_config(synthetic_config, int(i), lesion,
                                                  marker_prob=float(marker), hardware_prob=float(hardware))
                    for i in indices]
        for k in keys:
            out[k].append(np.stack([r[k] for r in rendered]))
    result = {k: np.stack(v).astype(np.uint8 if k == "image" else bool) for k, v in out.items()}
    result["cells"] = np.asarray(CELLS, np.int64)
    result["index"] = indices
    return result


# ----------------------------------------------------------------------------- scores

def stratified_auroc(scores, positive, strata) -> float:
    """AUROC counting only (positive, negative) pairs from the same stratum, ties 1/2.

    scores (probabilities in [0, 1]), positive (bool), strata (labels): (M,). Equals the pair-count
    weighted mean of the per-stratum AUROCs; NaN when no stratum holds both classes.
    """
    scores, positive, strata = (np.asarray(a).ravel() for a in (scores, positive, strata))
    total, pairs = 0.0, 0
    for s in np.unique(strata):
        sel = strata == s
        n_pos, n_neg = int(positive[sel].sum()), int((~positive[sel].astype(bool)).sum())
        if n_pos and n_neg:
            total += auroc(scores[sel], positive[sel].astype(int)) * n_pos * n_neg
            pairs += n_pos * n_neg
    return total / pairs if pairs else float("nan")


def _cell_of(cells, factor_values: Mapping[str, int]) -> int:
    """Row of `cells` (8, 3) with the given factor values."""
    want = [factor_values[f] for f in FACTORS]
    rows = np.flatnonzero(np.all(np.asarray(cells) == want, axis=1))
    if rows.size != 1:
        raise ValueError(f"cells must hold each combination of {FACTORS} once; {want} found {rows.size}x")
    return int(rows[0])


def _win_rate(on, off) -> float:
    """Share of pairs with on > off, ties counting 1/2."""
    on, off = np.asarray(on, float).ravel(), np.asarray(off, float).ravel()
    return float(np.mean((on > off) + 0.5 * (on == off)))


def lesion_scores(probs, cells) -> dict:
    """Lesion AUROC with the confounders held equal.

    probs: (8, N) P(abnormal) of the same N limbs in each of `cells` (8, 3) (lesion, marker,
    hardware). Returns {"pooled", "per_cell": {"marker=m,hardware=h": auroc}, "paired_win_rate"}.
    """
    probs = np.asarray(probs, float)
    per_cell, scores, positive, strata, on, off = {}, [], [], [], [], []
    for marker, hardware in itertools.product((0, 1), repeat=2):
        yes = probs[_cell_of(cells, dict(lesion=1, marker=marker, hardware=hardware))]
        no = probs[_cell_of(cells, dict(lesion=0, marker=marker, hardware=hardware))]
        per_cell[f"marker={marker},hardware={hardware}"] = auroc(
            np.r_[yes, no], np.r_[np.ones(yes.size, int), np.zeros(no.size, int)])
        scores += [yes, no]
        positive += [np.ones(yes.size, bool), np.zeros(no.size, bool)]
        strata.append(np.full(yes.size + no.size, 2 * marker + hardware))
        on.append(yes)
        off.append(no)
    pooled = stratified_auroc(np.concatenate(scores), np.concatenate(positive), np.concatenate(strata))
    return dict(pooled=pooled, per_cell=per_cell, paired_win_rate=_win_rate(on, off))


def confounder_scores(probs, cells, factor: str) -> dict:
    """How P(abnormal) moves when only `factor` ("marker" or "hardware") is switched on.

    probs: (8, N) as in `lesion_scores`. Returns {"effect": mean P(on) - P(off) over all
    matched pairs, "effect_normal": same on lesion-free limbs, "auroc_normal": on vs off on
    lesion-free limbs, pooled within the other confounder's strata, "paired_win_rate_normal"}.
    """
    if factor not in ("marker", "hardware"):
        raise ValueError(f"factor must be 'marker' or 'hardware', got {factor!r}")
    other = "hardware" if factor == "marker" else "marker"
    probs = np.asarray(probs, float)
    diffs, normal_diffs, scores, positive, strata, on_n, off_n = [], [], [], [], [], [], []
    for lesion, other_value in itertools.product((0, 1), repeat=2):
        held = {"lesion": lesion, other: other_value}
        on = probs[_cell_of(cells, {**held, factor: 1})]
        off = probs[_cell_of(cells, {**held, factor: 0})]
        diffs.append(on - off)
        if lesion == 0:
            normal_diffs.append(on - off)
            scores += [on, off]
            positive += [np.ones(on.size, bool), np.zeros(off.size, bool)]
            strata.append(np.full(2 * on.size, other_value))
            on_n.append(on)
            off_n.append(off)
    return dict(
        effect=float(np.mean(diffs)), effect_normal=float(np.mean(normal_diffs)),
        auroc_normal=stratified_auroc(np.concatenate(scores), np.concatenate(positive),
                                      np.concatenate(strata)),
        paired_win_rate_normal=_win_rate(on_n, off_n))


# ----------------------------------------------------------------------------- maps

def dilate(masks, tolerance: float) -> np.ndarray:
    """Masks (..., H, W) bool grown by a closed disk of radius `tolerance` pixels (0: unchanged)."""
    masks = np.asarray(masks, bool)
    r = int(np.floor(tolerance))
    if r <= 0:
        return masks
    out = masks.copy()
    h, w = masks.shape[-2:]
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > tolerance * tolerance or (dy == 0 and dx == 0):
                continue
            shifted = np.zeros_like(masks)
            shifted[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                masks[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out |= shifted
    return out


def argmax_categories(maps, lesion_mask, marker_mask, hardware_mask, bone_mask,
                      tolerance: float = 0.0) -> np.ndarray:
    """Category (index into `CATEGORIES`) of each map's arg-max pixel, (B,) int.

    maps and masks: (B, H, W) at the image size. The arg-max is the first maximum in row-major
    order (as the pointing game in `pcam_jax.evaluation.localisation`); lesion, marker and
    hardware masks are grown by `tolerance` pixels first (bone is not). Priority: `CATEGORIES`.
    """
    maps = np.asarray(maps, float)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W); got shape {maps.shape}")
    masks = [dilate(lesion_mask, tolerance), dilate(marker_mask, tolerance),
             dilate(hardware_mask, tolerance), np.asarray(bone_mask, bool)]
    for name, m in zip(CATEGORIES, masks):
        if m.shape != maps.shape:
            raise ValueError(f"{name} mask has shape {m.shape}, maps {maps.shape}: resize the maps to the image")
    b, h, w = maps.shape
    peak = np.argmax(maps.reshape(b, -1), axis=1)
    hits = np.stack([m.reshape(b, -1)[np.arange(b), peak] for m in masks] + [np.ones(b, bool)], 1)
    return np.argmax(hits, axis=1)  # first True in priority order; background always True


def category_shares(categories) -> dict:
    """{category: share of the images whose arg-max falls in it}, over `CATEGORIES`."""
    categories = np.asarray(categories).ravel()
    n = max(categories.size, 1)
    return {name: float(np.sum(categories == k) / n) for k, name in enumerate(CATEGORIES)}


# ----------------------------------------------------------------------------- driver

def shortcut_report(predict: Callable, maps: Callable | None, synthetic_config, num_limbs: int = 100,
                    first_index: int | None = None, tolerance: float | None = None,
                    rendered: dict | None = None) -> dict:
    """Counterfactual shortcut report of one model (keys in the module docstring).

    Args:
      predict: images uint8 (B, S, S) -> (B,) P(abnormal) (e.g. `Run.predict`).
      maps: images -> {method: (B, S, S) map} at the image size, or None to skip arg-max shares.
      synthetic_config: config.synthetic of the run (seed, image size, lesion settings).
      tolerance: pixels by which lesion, marker and hardware masks grow before arg-max
        categories are read; None: the evaluation's pointing-game default, 15 px at 320 px,
        scaled to the image size (6 px at 128): class maps are coarse (stride 16), and a
        thin marker stroke is rarely hit exactly.
      rendered: the output of `render_counterfactuals`, to reuse one render for many models.
    """
    if rendered is None:
        rendered = render_counterfactuals(synthetic_config, num_limbs, first_index)
    images = rendered["image"]
    n_cells, n = images.shape[:2]
    if tolerance is None:
        tolerance = round(15.0 * images.shape[-1] / 320.0, 1)
    flat = images.reshape((n_cells * n,) + images.shape[2:])
    probs = np.asarray(predict(flat), float).reshape(n_cells, n)
    cells = rendered["cells"]
    lesion = lesion_scores(probs, cells)
    report = dict(
        num_limbs=int(n), first_index=int(rendered["index"][0]), image_size=int(images.shape[-1]),
        seed=int(synthetic_config.seed), tolerance=float(tolerance),
        mean_probability={cell_name(c): float(p.mean()) for c, p in zip(cells, probs)},
        lesion_auroc=dict(pooled=lesion["pooled"], per_cell=lesion["per_cell"]),
        lesion_paired_win_rate=lesion["paired_win_rate"],
        marker=confounder_scores(probs, cells, "marker"),
        hardware=confounder_scores(probs, cells, "hardware"))
    if maps is not None:
        masks = {k: rendered[k].reshape(flat.shape) for k in
                 ("lesion_mask", "marker_mask", "hardware_mask", "bone_mask")}
        report["argmax"] = {}
        for method, m in maps(flat).items():
            cats = argmax_categories(np.asarray(m).reshape(flat.shape), masks["lesion_mask"],
                                     masks["marker_mask"], masks["hardware_mask"], masks["bone_mask"],
                                     tolerance).reshape(n_cells, n)
            report["argmax"][method] = dict(
                all=category_shares(cats),
                per_cell={cell_name(c): category_shares(k) for c, k in zip(cells, cats)})
    return report


def reliance_summary(report: Mapping) -> str:
    """One line: what the model relies on (lesion AUROC held equal, confounder effects, arg-max)."""
    lesion = report["lesion_auroc"]["pooled"]
    parts = [f"lesion AUROC {lesion:.2f} with marker and hardware held equal"]
    for factor in ("marker", "hardware"):
        f = report[factor]
        parts.append(f"{factor} {f['effect_normal']:+.2f} P(abnormal) on normal limbs (AUROC {f['auroc_normal']:.2f})")
    for method, found in (report.get("argmax") or {}).items():   # the paper's own maps
        shares = found.get("all") if registry.get(method).in_paper else None
        if shares:
            parts.append(f"{method} arg-max on lesion {shares['lesion']:.0%}, marker {shares['marker']:.0%}, "
                         f"hardware {shares['hardware']:.0%}")
    verdict = ("reads the lesion" if lesion >= 0.8 else "partly reads the lesion" if lesion >= 0.65
               else "does not read the lesion")
    strongest = max(("marker", "hardware"), key=lambda k: report[k]["auroc_normal"])
    if report[strongest]["auroc_normal"] >= 0.8:
        verdict += f", and follows the {strongest}"
    return f"{verdict}: " + "; ".join(parts)


def shortcut_table(reports: Mapping[str, Mapping]) -> str:
    """Markdown table, one row per stage: lesion AUROC per confounder cell, confounder effects."""
    head = ("| stage | lesion AUROC (pooled) | no marker, no hw | marker | hw | marker + hw | marker effect "
            "(AUROC) | hardware effect (AUROC) | positive CAM arg-max: lesion / marker / hw / bone |")
    lines = [head, "|" + "---|" * 8]
    for stage, r in reports.items():
        cells = r["lesion_auroc"]["per_cell"]
        shares = (r.get("argmax") or {}).get("positive_cam", {}).get("all")
        argmax = (" / ".join(f"{shares[k]:.2f}" for k in ("lesion", "marker", "hardware", "bone"))
                  if shares else "n/a")
        lines.append(
            f"| {stage} | {r['lesion_auroc']['pooled']:.3f} | "
            + " | ".join(f"{cells.get(k, float('nan')):.3f}" for k in
                         ("marker=0,hardware=0", "marker=1,hardware=0", "marker=0,hardware=1", "marker=1,hardware=1"))
            + f" | {r['marker']['effect_normal']:+.3f} ({r['marker']['auroc_normal']:.2f})"
            f" | {r['hardware']['effect_normal']:+.3f} ({r['hardware']['auroc_normal']:.2f}) | {argmax} |")
    return "\n".join(lines)
