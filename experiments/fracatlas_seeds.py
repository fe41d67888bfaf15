"""FracAtlas over seeds: each run's test-split numbers, their seed means, and paired differences.

    python experiments/fracatlas_seeds.py RUN_SEED0 RUN_SEED1 RUN_SEED2 [--stage4 eval_stage4]
        [--stages_from RUN RUN RUN] [--compare RUN RUN RUN]

Each RUN was trained with `pcam-jax train --config fracatlas --config.seed=S
--config.stage3.labelled_seed=S` and scored once with `python experiments/fracatlas_evaluate.py
RUN --save_maps` (stages 1-3, `RUN/eval`) and `... --stages 4 --out RUN/eval_stage4` (the segmenter
at the checkpoint the loop kept by its decoder's model_selection PxAP: its frozen random head has no
AUROC to pick by; runs that predate that were scored with ``--which latest``).

Printed (markdown): per seed and as mean [95 % t-interval over seeds, clipped to the metric's range]
(`pcam_jax.study.tables.mean_interval`): AUROC per stage, pointing game and PxAP per map; then paired
differences within each seed (same data, same labelled fractures, same stage-1 start), and for the
pointing game also a bootstrap over seeds and test fractures of the pooled per-image difference
(10,000 resamples: seeds resampled, then images within each), which uses the images' spread too.

``--stages_from``: runs (same seeds, same order) whose stage checkpoints these runs copied (e.g. a
stage 3 retrained from another run's stage 2); their scores fill the maps and AUROCs these runs
did not score. ``--compare``: runs of another recipe, same seeds and order; prints these runs minus
those for every map and AUROC both scored (the recipe's paired effect).
"""

import argparse
import json
import pathlib

import numpy as np

from pcam_jax.metrics import localisation
from pcam_jax.study.tables import format_cell, mean_interval

MAPS = ("stage1/cam", "stage1/positive_cam", "stage1/grad_cam_pp", "stage1/eigen_cam", "stage2/positive_cam",
        "stage3/positive_cam", "stage3/decoder", "stage4/decoder")
# (name, A, B): A - B within a seed; maps as in MAPS, "auroc:stageN" for classification
PAIRED = (("stage 3 decoder - stage 4 segmenter (same masks)", "stage3/decoder", "stage4/decoder"),
          ("stage 3 decoder - stage 1 positive CAM", "stage3/decoder", "stage1/positive_cam"),
          ("stage 2 attention - stage 1 positive CAM", "stage2/positive_cam", "stage1/positive_cam"),
          ("stage 1 positive CAM - stage 1 CAM", "stage1/positive_cam", "stage1/cam"),
          ("stage 3 positive CAM - stage 1 positive CAM", "stage3/positive_cam", "stage1/positive_cam"),
          ("AUROC stage 2 - stage 1", "auroc:stage2", "auroc:stage1"),
          ("AUROC stage 3 - stage 1", "auroc:stage3", "auroc:stage1"))


def read_run(run: pathlib.Path, stage4_dir: str) -> dict:
    """{"seed", "auroc": {stage: value}, "maps": {map: {"pg", "pxap"}}, "per_image_pg": {map: (N,)}}."""
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    out = {"run": str(run), "seed": int(metrics["config"]["seed"]),
           "labelled_seed": int(metrics["config"]["stage3"]["labelled_seed"]),
           "auroc": {s: c["image"]["auroc"] for s, c in metrics["classification"].items()},
           "maps": {}, "per_image_pg": {}, "seconds": metrics.get("seconds")}
    sources = [(metrics, run / "eval" / "maps.npz")]
    stage4 = run / stage4_dir / "metrics.json"
    if stage4.exists():
        sources.append((json.loads(stage4.read_text()), run / stage4_dir / "maps.npz"))
    for m, npz in sources:
        saved = np.load(npz) if npz.exists() else None
        for name, loc in m.get("localisation", {}).items():
            if name not in MAPS:
                continue
            out["maps"][name] = {"pg": loc["pointing_game"], "pxap": loc["pxap"]}
            if saved is not None and f"test/{name}" in saved:
                # recomputed from the saved maps (an independent path from the report's numbers)
                pg = localisation.pointing_game(saved[f"test/{name}"], saved["test_masks"], loc["tolerance"])
                if not np.isclose(pg.mean(), loc["pointing_game"]):
                    raise ValueError(f"{npz}: pointing game of {name} recomputed {pg.mean():.4f}, "
                                     f"reported {loc['pointing_game']:.4f}")
                out["per_image_pg"][name] = pg.astype(float)
    return out


def value(run: dict, key: str, metric: str):
    if key.startswith("auroc:"):
        return run["auroc"].get(key.split(":")[1])
    return run["maps"].get(key, {}).get(metric)


def bootstrap_pooled(runs: list[dict], a: str, b: str, resamples: int = 10_000, seed: int = 0):
    """Mean per-image difference of pointing game A - B pooled over seeds, and its 95 % percentile
    interval from a two-level bootstrap (seeds, then test fractures within each resampled seed)."""
    diffs = [r["per_image_pg"][a] - r["per_image_pg"][b] for r in runs
             if a in r["per_image_pg"] and b in r["per_image_pg"]]
    if not diffs:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for i in range(resamples):
        chosen = rng.integers(len(diffs), size=len(diffs))
        stats[i] = np.mean([diffs[j][rng.integers(len(diffs[j]), size=len(diffs[j]))].mean() for j in chosen])
    return float(np.mean([d.mean() for d in diffs])), float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def check_same_seed(run: dict, other: dict) -> None:
    """Runs compared or merged must share the seed and the labelled set."""
    if (run["seed"], run["labelled_seed"]) != (other["seed"], other["labelled_seed"]):
        raise ValueError(f"{run['run']} (seed {run['seed']}) and {other['run']} (seed {other['seed']}) are "
                         "not the same seed: give --stages_from / --compare in the runs' order")


def fill_from(run: dict, source: dict) -> dict:
    """``run`` with the maps, per-image pointing games and AUROCs it lacks taken from ``source``."""
    check_same_seed(run, source)
    for key in ("auroc", "maps", "per_image_pg"):
        run[key] = {**source[key], **run[key]}
    return run


def print_paired(runs: list[dict], paired) -> None:
    print("| A - B | metric | per seed | mean [t-interval] | pooled per image [bootstrap] |")
    print("|---|---|---|---|---|")
    for name, a, b in paired:
        for metric in (("auroc",) if a.startswith("auroc:") else ("pg", "pxap")):
            diffs = [None if value(r, a, metric) is None or value(r, b, metric) is None
                     else value(r, a, metric) - value(r, b, metric) for r in runs]
            if all(d is None for d in diffs):
                continue
            pooled = bootstrap_pooled(runs, a, b) if metric == "pg" else None
            pooled_cell = "-" if pooled is None else f"{pooled[0]:+.3f} [{pooled[1]:+.3f}, {pooled[2]:+.3f}]"
            print(f"| {name} | {metric} | " + ", ".join("-" if d is None else f"{d:+.3f}" for d in diffs) + " | "
                  + format_cell(mean_interval(diffs, bounds=(-1.0, 1.0))) + f" | {pooled_cell} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=pathlib.Path)
    parser.add_argument("--stage4", default="eval_stage4", help="the stage-4 evaluation's folder in each run")
    parser.add_argument("--stages_from", nargs="+", type=pathlib.Path, default=None,
                        help="runs whose checkpoints these copied: they fill what these did not score")
    parser.add_argument("--compare", nargs="+", type=pathlib.Path, default=None,
                        help="runs of another recipe (same seeds, same order): these minus those")
    args = parser.parse_args()
    own = [read_run(r, args.stage4) for r in args.runs]   # what these runs scored themselves
    runs = own
    if args.stages_from:
        if len(args.stages_from) != len(runs):
            parser.error("--stages_from needs one run per run, in the same order")
        runs = [fill_from(dict(r), read_run(s, args.stage4)) for r, s in zip(own, args.stages_from)]
    seeds = [r["seed"] for r in runs]
    print(f"Seeds {seeds} (stage-3 labelled sets {[r['labelled_seed'] for r in runs]}); test split, scored once.\n")
    print("| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95 % t-interval] |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for stage in sorted({s for r in runs for s in r["auroc"]}):
        if stage == "stage4":
            continue   # its head is frozen at the random start: not a classifier
        values = [r["auroc"].get(stage) for r in runs]
        print(f"| AUROC {stage} | " + " | ".join(f"{v:.3f}" for v in values) + " | "
              + format_cell(mean_interval(values, bounds=(0.0, 1.0))) + " |")
    for metric, title in (("pg", "pointing game"), ("pxap", "PxAP")):
        for name in MAPS:
            values = [value(r, name, metric) for r in runs]
            if all(v is None for v in values):
                continue
            print(f"| {title} {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " | "
                  + format_cell(mean_interval(values, bounds=(0.0, 1.0))) + " |")
    print("\nPaired differences A - B within each seed, mean [95 % t-interval of the per-seed differences, "
          "clipped to [-1, 1]]; pointing game also pooled per image with a seeds-and-images bootstrap.\n")
    print_paired(runs, PAIRED)
    if args.compare:
        if len(args.compare) != len(runs):
            parser.error("--compare needs one run per run, in the same order")
        others = [read_run(c, args.stage4) for c in args.compare]
        # one run per seed holding both recipes' numbers under "this/..." and "other/..." keys
        both = []
        for r, o in zip(own, others):   # only what these runs scored (a filled stage is the other run's)
            check_same_seed(r, o)
            merged = {"seed": r["seed"], "auroc": {}, "maps": {}, "per_image_pg": {}}
            for prefix, source in (("this", r), ("other", o)):
                merged["maps"].update({f"{prefix}/{k}": v for k, v in source["maps"].items()})
                merged["per_image_pg"].update({f"{prefix}/{k}": v for k, v in source["per_image_pg"].items()})
                merged["auroc"].update({f"{prefix}.{k}": v for k, v in source["auroc"].items()})
            both.append(merged)
        common = [m for m in MAPS if all(m in r["maps"] and m in o["maps"] for r, o in zip(own, others))]
        stages = sorted(set.intersection(*[set(r["auroc"]) & set(o["auroc"]) for r, o in zip(own, others)]) - {"stage4"})
        print(f"\nThese runs minus {[str(c) for c in args.compare]} (another recipe; same seeds, data and "
              "labelled fractures), within each seed.\n")
        print_paired(both, [(f"{m}: this - other", f"this/{m}", f"other/{m}") for m in common]
                     + [(f"AUROC {s}: this - other", f"auroc:this.{s}", f"auroc:other.{s}") for s in stages])


if __name__ == "__main__":
    main()
