"""The numbers a recipe or checkpoint choice may be made on: no test image, no reported limb.

- `heldout_localisation`: a stage's maps on the ``heldout_labelled`` split (pointing game, PxAP);
- `selection_shortcuts`: the counterfactual shortcut report (`pcam_jax.evaluation.shortcuts`) on
  *selection limbs*, `SELECTION_OFFSET` past the first limb `pcam-jax evaluate` reports, so a
  choice made on them is never scored on the limbs that are reported.

The few-label segmenter's (stage 4) checkpoint is chosen in the loop itself, by its decoder's
PxAP on the same held-out masks (`pcam_jax.training.selection`, `Stage.best_by_localisation`).

`experiments/selection_scores.py` prints all of it for a run.
"""

from __future__ import annotations

import json
import pathlib

from pcam_jax.data import HELDOUT_MASK_SPLIT

SELECTION_OFFSET = 500_000   # selection limbs: first_heldout_index + this (reported ones start at +0)
HELDOUT_SPLIT = HELDOUT_MASK_SPLIT["synthetic"]   # the study's data are synthetic


def _tolerance(config) -> float:
    from pcam_jax.metrics import localisation

    return localisation.pointing_tolerance(int(config.data.image_size), config.eval.pointing_tolerance)


def heldout_localisation(runs: dict, methods: dict[int, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """{"stageN/method": {"pointing_game", "pxap"}} of the `analysis.Run`s ``runs`` ({stage: run})
    on the held-out labelled split of their (shared) dataset."""
    from pcam_jax.data import resolve_data_dir
    from pcam_jax.evaluation import evaluate
    from pcam_jax.metrics import localisation

    config = next(iter(runs.values())).config
    held = evaluate._collect(runs, config, HELDOUT_SPLIT, resolve_data_dir(config, None), methods=methods)
    return {name: {"pointing_game": float(localisation.pointing_game(maps, held["masks"], _tolerance(config)).mean()),
                   "pxap": float(localisation.pxap(maps, held["masks"]))}
            for name, maps in held["maps"].items()}


def selection_shortcuts(run, methods: tuple[str, ...], limbs: int, rendered=None) -> dict:
    """The shortcut numbers of one `analysis.Run` on ``limbs`` selection limbs."""
    from pcam_jax.evaluation import shortcuts

    config = run.config
    first = shortcuts.first_heldout_index(config.synthetic) + SELECTION_OFFSET
    report = shortcuts.shortcut_report(run.predict, lambda x: {m: run.maps(x, method=m) for m in methods},
                                       config.synthetic, limbs, first, tolerance=_tolerance(config), rendered=rendered)
    return {"first_index": first, "limbs": limbs, "lesion_auroc": report["lesion_auroc"]["pooled"],
            "hardware_effect_normal": report["hardware"]["effect_normal"],
            "hardware_auroc_normal": report["hardware"]["auroc_normal"],
            "marker_effect_normal": report["marker"]["effect_normal"],
            "argmax": {m: report["argmax"][m]["all"] for m in methods}}


def stage_scores(workdir, stages, limbs: int = 100) -> dict:
    """Per stage of the run in ``workdir`` (best checkpoint): its model-selection metrics (from the
    training log), held-out localisation of its maps, and its selection-limb shortcut numbers."""
    from pcam_jax.maps import registry as maps_registry
    from pcam_jax.run import analysis
    from pcam_jax.training import stages as stages_lib

    workdir = pathlib.Path(workdir)
    runs = {s: analysis.load(workdir, s, "best") for s in stages}
    methods = {s: tuple(m for m in stages_lib.get(s).map_methods if maps_registry.get(m).in_paper)  # the paper's maps
               for s in stages}
    held = heldout_localisation(runs, methods)
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for s, run in runs.items():
        evals = [r for r in log if r["stage"] == s and r.get("split") == "model_selection" and r["step"] == run.step]
        entry = {"step": run.step, "model_selection": evals[-1] if evals else None,
                 HELDOUT_SPLIT: {m: held[f"stage{s}/{m}"] for m in methods[s]}}
        if stages_lib.get(s).uses("l1"):
            entry["selection_limbs"] = selection_shortcuts(
                run, tuple(m for m in methods[s] if m != "cam"), limbs)   # the stage's own map(s)
        out[f"stage{s}"] = entry
    return out

