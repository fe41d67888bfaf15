"""The acquisition study of issue 23 (item 4), on the synthetic world and on FracAtlas, one command each, resumable:

    nice python experiments/acquisition_study.py --workdir work/acquisition [--seeds 0,1,2]
    nice python experiments/acquisition_study.py --workdir work/acquisition --fracatlas_runs 'fa/run{seed}' \
        [--functions random,uncertainty] [--budgets 30,100,10]

Per seed: a synthetic world (pcam_jax.study's ``small`` preset, shortcuts on, no built-in labelled
images) and stages 1 and 2 trained once; every acquisition function of
`pcam_jax.labelling.acquisition` ranks the abnormal train images from that stage 2; the dataset's
own masks stand in for the clinician (the oracle labeller, `store.coco_from_masks`); stage 3 is
trained from the top 10 / 30 / 100 of each list (a copy of the seed's stages 1-2) and its decoder
map is scored on the test split's lesion images: PxAP and pointing game (15 px at 320 px, scaled).
Results go to <workdir>/results.jsonl, one line per run; a run already there is skipped.
``--report`` writes <workdir>/acquisition.md (table) and acquisition.png (curves) from them.
Nothing is chosen on test: the functions, budgets and recipe are fixed beforehand.

``--fracatlas_runs TEMPLATE``: the FracAtlas arm. Each seed's run (TEMPLATE with ``{seed}``; trained
with `pcam-jax train --config fracatlas --config.seed=S --config.stage3.labelled_seed=S`) gives stages
1-2 and stage 3's recipe (its stage-3 config); each function ranks its fractured train images from
stage 2's best checkpoint (where stage 3 starts) into ``ranking_FUNCTION.csv``, and stage 3 is
retrained with that recipe from the first N
(``config.stage3.labelled_list``: FracAtlas's own masks are the oracle); ``random`` is the preset's own
seeded rule (``labelled_seed``), so the run's own stage 3 is that cell where its recipe is the same
(checked field by field) and is scored instead of retrained. Rows carry ``"dataset": "fracatlas"``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

FUNCTIONS = ("random", "uncertainty", "map_entropy", "map_disagreement", "tta")
# map_disagreement as the study ran it (the library's default is now the registry's Figure-2 classifier maps)
DISAGREEMENT_METHODS = ("cam", "positive_cam", "grad_cam", "layer_cam")
BUDGETS = (30, 100, 10)   # in this order, all seeds of one before the next: the target's cells first


def _done(results: pathlib.Path) -> dict:
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["seed"], r["function"], r["labels"]): r for r in rows}


def base_config(seed: int, workdir: pathlib.Path):
    from pcam_jax import study as study_lib

    config = study_lib.study_config("small", "clear")
    with config.unlocked():
        config.seed = seed
        config.synthetic.seed = seed
        config.synthetic.num_labelled = 0   # every abnormal train image is a candidate
        # Today's stage-3 recipe without hard_background: at this preset's size (80 stage-3 steps from
        # 30 labels) it kills the balanced-MSE decoder (seed 0: L3 stuck at 0.25, the value of a decoder
        # at 0 everywhere, from step 20 with normal images too; at 0.35 with it alone), while with
        # the normal images alone or neither L3 falls to 0.03-0.06 (docs/RESULTS.md section 7)
        config.stage3.hard_background = 0.0
        config.data.data_dir = str((workdir / "data").absolute())
    return config


def train_masks(config, keep_masks: bool = True) -> dict:
    """{path: uint8 (H, W)} lesion masks of the abnormal train images (the oracle); with
    ``keep_masks=False`` {path: lesion pixels} (FracAtlas: full-size masks, counted, not kept)."""
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    records = pipeline.load_records(config, "train").filter(lambda r: tf.logical_and(tf.equal(r["label"], 1), r["has_mask"]))
    out = {}
    for path, mask in records.map(lambda r: (r["path"], r["lesion_mask"])).as_numpy_iterator():
        mask = tf.io.decode_png(mask).numpy()[..., 0] if isinstance(mask, bytes) else np.asarray(mask)[..., 0]
        if mask.any():
            out[path.decode()] = mask if keep_masks else int(np.count_nonzero(mask))
    return out


def score_decoder(run_dir: pathlib.Path, config) -> dict:
    """PxAP and pointing game of stage 3's decoder map on the test split's images with lesions."""
    import jax.numpy as jnp

    from pcam_jax import load, maps as maps_lib
    from pcam_jax.data import pipeline
    from pcam_jax.metrics import localisation

    run = load(run_dir, stage=3, which="latest")
    tf = pipeline.tf
    records = pipeline.load_records(config, "test").filter(lambda r: tf.logical_and(tf.equal(r["label"], 1), r["has_mask"]))
    maps, masks = [], []
    for batch in pipeline.eval_batches(config, records):
        valid = batch["valid"] & batch["has_mask"]
        raw = run.raw_maps(batch["image"][valid], ("decoder",))["decoder"]
        maps.append(np.asarray(maps_lib.normalize(jnp.asarray(raw))))
        masks.append(batch["mask"][valid])
    maps, masks = np.concatenate(maps), np.concatenate(masks)
    tolerance = localisation.pointing_tolerance(int(config.data.image_size), float(config.eval.pointing_tolerance))
    return {"pxap": float(localisation.pxap(maps, masks)),
            "pointing": float(np.mean(localisation.pointing_game(maps, masks, tolerance))), "test_images": len(maps)}


def train(config, run_dir: pathlib.Path, stages, copy_from: pathlib.Path | None = None) -> None:
    """``stages`` of ``config`` in ``run_dir`` (resumed if cut), after copying stages 1-2 from ``copy_from``."""
    from pcam_jax import study as study_lib
    from pcam_jax.training import loop, reporting

    for stage in (1, 2) if copy_from is not None else ():
        study_lib.copy_stage(copy_from, run_dir, stage)
    reporter = reporting.Reporter(run_dir, tensorboard=False)
    try:
        loop.train_and_evaluate(config, run_dir, stages, reporter=reporter)
    finally:
        reporter.close()


def prepare_seed(seed: int, workdir: pathlib.Path) -> dict:
    """The seed's world and stages 1-2 (trained once, resumed if cut), its oracle and candidates."""
    from pcam_jax import load
    from pcam_jax.labelling import selection

    config = base_config(seed, workdir)
    base = workdir / f"seed{seed}" / "stages12"
    t0 = time.time()
    train(config, base, (1, 2))
    print(f"seed {seed}: stages 1-2 ready ({time.time() - t0:.0f} s)", flush=True)
    return {"seed": seed, "config": config, "base": base, "oracle": train_masks(config),
            "run2": load(base, stage=2, which="latest"), "records": selection.candidate_records(config, set())}


def ranked_paths(world: dict, function: str, ranking: pathlib.Path) -> list[str]:
    """``function``'s ranking of the world's candidates (scored once, then read from ``ranking``)."""
    from pcam_jax.data import clinician_labels
    from pcam_jax.labelling import selection

    if not ranking.is_file():
        methods = DISAGREEMENT_METHODS if function == "map_disagreement" else None
        paths, scores = selection.score_candidates(world["run2"], world["records"], function, methods=methods,
                                                   seed=world["seed"], progress=False)
        selection.write_list(selection.rank(paths, scores, len(paths)), ranking)
    return clinician_labels.read_list(ranking)


def fracatlas_world(seed: int, runs: str) -> dict:
    """The seed's FracAtlas run (stages 1-2 trained), its config, candidates and oracle."""
    from pcam_jax import load
    from pcam_jax.labelling import selection

    from pcam_jax.training import checkpointing

    base = pathlib.Path(runs.format(seed=seed))
    run2 = load(base, stage=2, which="best")   # where the loop starts stage 3
    # the recipe: the run's own stage 3's config where it has one (its stage 2 saved the config of its day)
    config = (load(base, stage=3, which="latest") if checkpointing.stage_directory(base, 3).is_dir() else run2).config
    if config.data.dataset != "fracatlas":
        raise ValueError(f"{base}: a {config.data.dataset!r} run; --fracatlas_runs names FracAtlas runs")
    return {"seed": seed, "config": config, "base": base, "run2": run2, "dataset": "fracatlas",
            "oracle": train_masks(config, keep_masks=False), "records": selection.candidate_records(config, set())}


def fracatlas_run_one(world: dict, function: str, budget: int, workdir: pathlib.Path) -> dict:
    """Stage 3 (the seed run's recipe) from the first ``budget`` fractures of ``function``'s list; scored."""
    from pcam_jax import configs
    from pcam_jax.data import fracatlas
    from pcam_jax.training import checkpointing

    seed, config, base, oracle = world["seed"], world["config"], world["base"], world["oracle"]
    t0 = time.time()
    out = workdir / "fracatlas" / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    config3 = config.copy_and_resolve_references()
    with config3.unlocked():
        config3.stage3.num_labelled, config3.stage3.labelled_seed, config3.stage3.labelled_list = budget, seed, ""
    if function == "random":   # the preset's own seeded rule
        chosen = sorted(fracatlas.labelled_paths(list(oracle), budget, seed))
    else:
        ranking = out / f"ranking_{function}.csv"
        chosen = [p for p in ranked_paths(world, function, ranking) if p in oracle][:budget]
        with config3.unlocked():
            config3.stage3.labelled_list = str(ranking.absolute())
    run_dir = out / f"{function}_{budget}"
    own = checkpointing.stage_directory(base, 3)
    # ``config`` is the run's own stage-3 config where it has a stage 3 (`fracatlas_world`)
    if function == "random" and own.is_dir() and not checkpointing.config_differences(
            configs.to_json_dict(config), configs.to_json_dict(config3), 3):
        run_dir = base   # the seed's own run is this cell: scored, not retrained
    else:
        train(config3, run_dir, (3,), copy_from=base)
    return {"dataset": "fracatlas", "seed": seed, "function": function, "labels": len(chosen), "run": str(run_dir),
            **score_decoder(run_dir, config), "lesion_pixels": int(sum(oracle[p] for p in chosen)),
            "seconds": round(time.time() - t0, 1)}


def run_one(world: dict, function: str, budget: int, workdir: pathlib.Path) -> dict:
    """Stage 3 from the top ``budget`` images of ``function``'s list, labelled by the oracle; scored."""
    from pcam_jax.labelling import store

    seed, config, base, oracle = world["seed"], world["config"], world["base"], world["oracle"]
    t0 = time.time()
    chosen = [p for p in ranked_paths(world, function, base / f"ranking_{function}.csv") if p in oracle][:budget]
    run_dir = workdir / f"seed{seed}" / f"{function}_{budget}"
    labels = run_dir / "labels.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_json(labels, store.coco_from_masks({p: oracle[p] for p in chosen}))
    config3 = config.copy_and_resolve_references()
    with config3.unlocked():
        config3.stage3.lesion_labels = str(labels.absolute())
    train(config3, run_dir, (3,), copy_from=base)
    return {"seed": seed, "function": function, "labels": len(chosen), **score_decoder(run_dir, config),
            "lesion_pixels": int(sum(oracle[p].sum() for p in chosen)), "seconds": round(time.time() - t0, 1)}


def report(results: pathlib.Path, out_dir: pathlib.Path) -> str:
    """acquisition.md (mean [95 % t-interval] over seeds; the paired difference to random, seed by
    seed) and acquisition.png (label-efficiency curves per function) from the finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pcam_jax.study.tables import format_cell, mean_interval

    rows = list(_done(results).values())
    functions = [f for f in FUNCTIONS if any(r["function"] == f for r in rows)]
    budgets = sorted({r["labels"] for r in rows})
    cell = {(r["seed"], r["function"], r["labels"]): r for r in rows}
    lines = ["| function | labels | seeds | PxAP | PxAP - random (paired) | pointing game | pointing - random (paired) | lesion px labelled |",
             "|---|---|---|---|---|---|---|---|"]
    curves = {}
    for function in functions:
        for budget in budgets:
            found = [r for r in rows if r["function"] == function and r["labels"] == budget]
            if not found:
                continue
            paired = [(r, cell.get((r["seed"], "random", budget))) for r in found]
            paired = [(r, q) for r, q in paired if q is not None]
            # t-intervals clipped to each metric's range (marked *): [0, 1], a difference [-1, 1]
            stats = {m: mean_interval([r[m] for r in found], bounds=(0.0, 1.0)) for m in ("pxap", "pointing")}
            stats["lesion_pixels"] = mean_interval([r["lesion_pixels"] for r in found])
            diff = {m: mean_interval([r[m] - q[m] for r, q in paired], bounds=(-1.0, 1.0)) for m in ("pxap", "pointing")}
            curves.setdefault(function, []).append((budget, stats))
            show_diff = function != "random"
            lines.append(f"| {function} | {budget} | {len(found)} | {format_cell(stats['pxap'])} | "
                         f"{format_cell(diff['pxap']) if show_diff else '-'} | {format_cell(stats['pointing'])} | "
                         f"{format_cell(diff['pointing']) if show_diff else '-'} | {stats['lesion_pixels']['mean']:.0f} |")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for function, points in curves.items():
        for ax, metric in zip(axes, ("pxap", "pointing")):
            x = [b for b, _ in points]
            y = [p[metric]["mean"] for _, p in points]
            err = [[m - (p[metric]["low"] if p[metric]["low"] is not None else m) for m, (_, p) in zip(y, points)],
                   [(p[metric]["high"] if p[metric]["high"] is not None else m) - m for m, (_, p) in zip(y, points)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=function,   # the clipped interval
                        linestyle="--" if function == "random" else "-")
    for ax, title in zip(axes, ("decoder PxAP", "decoder pointing game")):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("labelled images (chosen by the function, labelled by the oracle)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(out_dir / "acquisition.png", dpi=110)
    table = "\n".join(lines) + "\n"
    (out_dir / "acquisition.md").write_text(table)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="work/acquisition")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--fracatlas_runs", default="",
                        help="the FracAtlas arm: each seed's trained run, e.g. 'runs/fa{seed}' (results in WORKDIR/fracatlas)")
    parser.add_argument("--report", action="store_true",
                        help="only write acquisition.md/.png from results.jsonl (and WORKDIR/fracatlas's, if there)")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    if args.report:
        for out_dir in (workdir, workdir / "fracatlas"):
            if (out_dir / "results.jsonl").is_file():
                print(f"{out_dir}:\n{report(out_dir / 'results.jsonl', out_dir)}")
        return 0
    from pcam_jax import runtime

    runtime.configure()
    out_dir = workdir / "fracatlas" if args.fracatlas_runs else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    done = _done(results)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.fracatlas_runs:
        worlds, run = [fracatlas_world(seed, args.fracatlas_runs) for seed in seeds], fracatlas_run_one
    else:
        worlds, run = [prepare_seed(seed, workdir) for seed in seeds], run_one
    for budget in budgets:  # every seed of a budget before the next budget: a cut run still pairs seeds
        for world in worlds:
            for function in args.functions.split(","):
                if (world["seed"], function, budget) in done:
                    continue
                row = run(world, function, budget, workdir)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[(world["seed"], function, budget)] = row
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
