"""Are a trained stage's maps trustworthy? Faithfulness and sanity figures for `pcam-jax evaluate`.

For one trained stage (`pcam_jax.run.analysis.Run`) and a batch of test images with lesions, per
map method of the stage (`pcam_jax.training.stages`), every map made for the abnormal class:

- faithfulness (`pcam_jax.trust.faithfulness`): deletion AUC (pixels removed most relevant first,
  to 0; lower is more faithful), insertion AUC (pixels restored onto a blurred image; higher is
  better), ROAD MoRF and LeRF means and their combination ``(LeRF - MoRF) / 2`` (higher is
  better), average drop (%) and increase (%) in confidence of the image multiplied by the map;
- sanity (`pcam_jax.trust.sanity`): SSIM and Spearman of each map to the trained model's as the
  head, then the encoder blocks from the top down, are re-initialised (cascading
  randomisation; a method passes when the fully randomised model's map has mean SSIM < 0.5),
  and the random-logit test (map for the other class against the abnormal-class map).

Everything is one jitted program per figure; the sizes (images, steps) come from config.eval.
The decoder map of stage 3 is not a classifier explanation: it gets faithfulness figures (it
does say where the lesion is; does the classifier's decision live there?) but no sanity check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pcam_jax.trust.programs import faithfulness_figures, faithfulness_program, sanity_figures


def _settings(config) -> dict:
    e = config.eval
    return dict(images=int(e.trust_images), sanity_images=int(e.sanity_images), steps=int(e.deletion_steps),
                road_iterations=int(e.road_iterations), seed=int(config.seed))


def trust_report(runs: dict[int, Any], test: dict, stage_methods: dict[int, tuple[str, ...]], config,
                 sections=None) -> dict:
    """{f"stage{s}/{method}": {faithfulness figures, "sanity_passes", "cascade_final_ssim",
    "random_logit_ssim"}} plus "_cascade" (for the figure) from the first ``trust_images`` test
    images with lesions (``test`` as `pcam_jax.evaluation.evaluate` collects it). ``sections``
    (`pcam_jax.evaluation.progress.Sections`): a progress bar for the faithfulness figures (one
    step per stage and map) and one for the sanity checks (one per stage)."""
    from pcam_jax.evaluation import progress

    sections = sections or progress.Sections(show=False)
    settings = _settings(config)
    n = min(settings["images"], len(test["images"]))
    if n == 0:
        return {}
    images = test["images"][:n, ..., None].astype(np.float32)
    faith, sane, programs = {}, {}, {}
    with sections.section(f"faithfulness ({n} images)", total=sum(map(len, stage_methods.values())), unit="map") as bar:
        for stage, run in runs.items():
            # One compiled program for every stage with the same network (variables are an argument).
            if run.model.spec not in programs:
                programs[run.model.spec] = faithfulness_program(run.model, steps=settings["steps"],
                                                                road_iterations=settings["road_iterations"])
            for m in stage_methods[stage]:
                faith[stage, m] = faithfulness_figures(run, images, {m: test["maps"][f"stage{stage}/{m}"][:n]},
                                                       seed=settings["seed"], program=programs[run.model.spec])[m]
                bar.update()
    with sections.section(f"sanity ({settings['sanity_images']} images)", total=len(runs), unit="stage") as bar:
        for stage, run in runs.items():
            sane[stage] = sanity_figures(run, images[:settings["sanity_images"]], stage_methods[stage],
                                         seed=settings["seed"])
            bar.update()
    out, cascade_for_figure = {}, None
    for stage in runs:
        methods, sane_stage = stage_methods[stage], sane[stage]
        for m in methods:
            entry = {k: float(np.mean(v)) for k, v in faith[stage, m].items()}
            if sane_stage and m in sane_stage["cascade"]:
                entry.update(sanity_passes=sane_stage["cascade"][m]["passes"],
                             cascade_final_ssim=sane_stage["cascade"][m]["ssim"][-1],
                             cascade_final_spearman=sane_stage["cascade"][m]["spearman"][-1],
                             random_logit_ssim=sane_stage["random_logit"][m]["ssim"])
            out[f"stage{stage}/{m}"] = entry
        if sane_stage and cascade_for_figure is None:
            cascade_for_figure = {"stage": stage, "steps": sane_stage["steps"], "maps": sane_stage["maps"],
                                  "ssim": {m: sane_stage["cascade"][m]["ssim"] for m in sane_stage["cascade"]},
                                  "images": images[:settings["sanity_images"], ..., 0]}
    out["_cascade"] = cascade_for_figure
    return out


TABLE_COLUMNS = (
    ("deletion_auc", "Deletion AUC (lower better)"), ("insertion_auc", "Insertion AUC"),
    ("road_combined", "ROAD (LeRF-MoRF)/2"), ("average_drop", "Avg drop %"),
    ("average_increase", "Avg increase %"), ("cascade_final_ssim", "SSIM, all randomised"),
    ("random_logit_ssim", "SSIM, other class"), ("sanity_passes", "Sanity"),
)


def trust_table(trust: dict) -> str:
    """The Markdown table of `trust_report` (one row per stage/method)."""
    from pcam_jax.evaluation import report

    rows = {name: {k: ("pass" if v else "FAIL") if k == "sanity_passes" else v for k, v in entry.items()}
            for name, entry in trust.items() if not name.startswith("_")}
    return report.format_table(rows, [k for k, _ in TABLE_COLUMNS], headers=dict(TABLE_COLUMNS))
