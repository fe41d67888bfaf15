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

from pcam_jax.trust.programs import faithfulness_figures, sanity_figures


def _settings(config) -> dict:
    e = config.eval
    return dict(images=int(e.trust_images), sanity_images=int(e.sanity_images), steps=int(e.deletion_steps),
                road_iterations=int(e.road_iterations), seed=int(config.seed))


def trust_report(runs: dict[int, Any], test: dict, stage_methods: dict[int, tuple[str, ...]], config) -> dict:
    """{f"stage{s}/{method}": {faithfulness figures, "sanity_passes", "cascade_final_ssim",
    "random_logit_ssim"}} plus "_cascade" (for the figure) from the first ``trust_images`` test
    images with lesions (``test`` as `pcam_jax.evaluation.evaluate` collects it)."""
    settings = _settings(config)
    n = min(settings["images"], len(test["images"]))
    if n == 0:
        return {}
    images = test["images"][:n, ..., None].astype(np.float32)
    out, cascade_for_figure = {}, None
    for stage, run in runs.items():
        methods = stage_methods[stage]
        maps = {m: test["maps"][f"stage{stage}/{m}"][:n] for m in methods}
        faith = faithfulness_figures(run, images, maps, steps=settings["steps"],
                                     road_iterations=settings["road_iterations"], seed=settings["seed"])
        sane = sanity_figures(run, images[:settings["sanity_images"]], methods, seed=settings["seed"])
        for m in methods:
            entry = {k: float(np.mean(v)) for k, v in faith[m].items()}
            if sane and m in sane["cascade"]:
                entry.update(sanity_passes=sane["cascade"][m]["passes"],
                             cascade_final_ssim=sane["cascade"][m]["ssim"][-1],
                             cascade_final_spearman=sane["cascade"][m]["spearman"][-1],
                             random_logit_ssim=sane["random_logit"][m]["ssim"])
            out[f"stage{stage}/{m}"] = entry
        if sane and cascade_for_figure is None:
            cascade_for_figure = {"stage": stage, "steps": sane["steps"], "maps": sane["maps"],
                                  "ssim": {m: sane["cascade"][m]["ssim"] for m in sane["cascade"]},
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
