"""The numbers a recipe choice may be made on: no test image, no reported counterfactual limb.

    python experiments/selection_scores.py --workdir work/demo [--stages 1,2,3] [--limbs 100] [--out FILE]

For each trained stage of the run (its best checkpoint): the model-selection metrics of that
checkpoint (from the training log), the stage's maps scored on the ``heldout_labelled`` split
(pointing game, PxAP; stage 3: decoder and positive CAM), and the counterfactual shortcut report
(`pcam_jax.evaluation.shortcuts`) on *selection limbs*: ``--limbs`` held-out limbs starting
`SELECTION_OFFSET` past the first reported limb, so a choice made on them is never scored on the
limbs `pcam-jax evaluate` reports. Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

SELECTION_OFFSET = 500_000   # selection limbs: first_heldout_index + this (reported ones start at +0)


def scores(workdir, stages, limbs: int) -> dict:
    from pcam_jax.run import analysis
    from pcam_jax.data import resolve_data_dir
    from pcam_jax.evaluation import evaluate, shortcuts
    from pcam_jax.metrics import localisation
    from pcam_jax.training import stages as stages_lib

    workdir = pathlib.Path(workdir)
    runs = {s: analysis.load(workdir, s, "best") for s in stages}
    config = runs[stages[-1]].config
    methods = {s: tuple(m for m in ("decoder", "positive_cam", "cam") if m in stages_lib.get(s).map_methods)
               for s in stages}
    held = evaluate._collect(runs, config, "heldout_labelled", resolve_data_dir(config, None), methods=methods)
    tolerance = localisation.pointing_tolerance(int(config.data.image_size), config.eval.pointing_tolerance)
    first = shortcuts.first_heldout_index(config.synthetic) + SELECTION_OFFSET
    rendered = shortcuts.render_counterfactuals(config.synthetic, limbs, first)
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for s, run in runs.items():
        entry = {"step": run.step,
                 "model_selection": next((r for r in log if r["stage"] == s and r.get("split") == "model_selection"
                                          and r["step"] == run.step), None),
                 "heldout_labelled": {}}
        for m in methods[s]:
            maps, masks = held["maps"][f"stage{s}/{m}"], held["masks"]
            entry["heldout_labelled"][m] = {
                "pointing_game": float(localisation.pointing_game(maps, masks, tolerance).mean()),
                "pxap": float(localisation.pxap(maps, masks))}
        argmax_methods = tuple(m for m in ("positive_cam", "decoder") if m in methods[s])
        report = shortcuts.shortcut_report(
            run.predict, lambda x, run=run, ms=argmax_methods: {m: run.maps(x, method=m) for m in ms},
            config.synthetic, tolerance=tolerance, rendered=rendered)
        entry["selection_limbs"] = {
            "first_index": first, "lesion_auroc": report["lesion_auroc"]["pooled"],
            "hardware_effect_normal": report["hardware"]["effect_normal"],
            "hardware_auroc_normal": report["hardware"]["auroc_normal"],
            "marker_effect_normal": report["marker"]["effect_normal"],
            "argmax": {m: report["argmax"][m]["all"] for m in argmax_methods}}
        out[f"stage{s}"] = entry
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--limbs", type=int, default=100)
    parser.add_argument("--out", default="")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from pcam_jax import runtime

    runtime.configure()
    result = scores(args.workdir, tuple(int(s) for s in args.stages.split(",")), args.limbs)
    text = json.dumps(result, indent=1)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
