"""The acquisition study of issue 23 (item 4) on the synthetic world, one command, resumable:

    nice python experiments/acquisition_study.py --workdir work/acquisition [--seeds 0,1,2]

Per seed: a synthetic world (pcam_jax.study's ``small`` preset, shortcuts on, no built-in labelled
images) and stages 1 and 2 trained once; every acquisition function of
`pcam_jax.labelling.acquisition` ranks the abnormal train images from that stage 2; the dataset's
own masks stand in for the clinician (the oracle labeller, `store.coco_from_masks`); stage 3 is
trained from the top 10 / 30 / 100 of each list (a copy of the seed's stages 1-2) and its decoder
map is scored on the test split's lesion images: PxAP and pointing game (15 px at 320 px, scaled).
Results go to <workdir>/results.jsonl, one line per run; a run already there is skipped.
``--report`` writes <workdir>/acquisition.md (table) and acquisition.png (curves) from them.
Nothing is chosen on test: the functions, budgets and recipe are fixed beforehand.
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
        config.data.data_dir = str((workdir / "data").absolute())
    return config


def train_masks(config) -> dict:
    """{path: uint8 (H, W)} lesion masks of the abnormal train images (the oracle)."""
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    records = pipeline.load_records(config, "train").filter(lambda r: tf.equal(r["label"], 1))
    out = {}
    for path, mask in records.map(lambda r: (r["path"], r["lesion_mask"])).as_numpy_iterator():
        mask = tf.io.decode_png(mask).numpy()[..., 0] if isinstance(mask, bytes) else np.asarray(mask)[..., 0]
        if mask.any():
            out[path.decode()] = mask
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


def prepare_seed(seed: int, workdir: pathlib.Path) -> dict:
    """The seed's world and stages 1-2 (trained once, resumed if cut), its oracle and candidates."""
    from pcam_jax import load
    from pcam_jax.labelling import selection
    from pcam_jax.training import loop, reporting

    config = base_config(seed, workdir)
    base = workdir / f"seed{seed}" / "stages12"
    t0 = time.time()
    reporter = reporting.Reporter(base, tensorboard=False)
    try:
        loop.train_and_evaluate(config, base, (1, 2), reporter=reporter)
    finally:
        reporter.close()
    print(f"seed {seed}: stages 1-2 ready ({time.time() - t0:.0f} s)", flush=True)
    return {"seed": seed, "config": config, "base": base, "oracle": train_masks(config),
            "run2": load(base, stage=2, which="latest"), "records": selection.candidate_records(config, set())}


def run_one(world: dict, function: str, budget: int, workdir: pathlib.Path) -> dict:
    """Stage 3 from the top ``budget`` images of ``function``'s list, labelled by the oracle; scored."""
    from pcam_jax import study as study_lib
    from pcam_jax.labelling import selection, store
    from pcam_jax.training import loop, reporting

    seed, config, base, oracle = world["seed"], world["config"], world["base"], world["oracle"]
    t0 = time.time()
    ranking = base / f"ranking_{function}.json"
    if not ranking.is_file():
        methods = DISAGREEMENT_METHODS if function == "map_disagreement" else None
        paths, scores = selection.score_candidates(world["run2"], world["records"], function, methods=methods,
                                                   seed=seed, progress=False)
        ranking.write_text(json.dumps([p for p, _, _ in selection.rank(paths, scores, len(paths))]))
    chosen = [p for p in json.loads(ranking.read_text()) if p in oracle][:budget]
    run_dir = workdir / f"seed{seed}" / f"{function}_{budget}"
    labels = run_dir / "labels.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_json(labels, store.coco_from_masks({p: oracle[p] for p in chosen}))
    for stage in (1, 2):
        study_lib.copy_stage(base, run_dir, stage)
    config3 = config.copy_and_resolve_references()
    with config3.unlocked():
        config3.stage3.lesion_labels = str(labels.absolute())
    reporter = reporting.Reporter(run_dir, tensorboard=False)
    try:
        loop.train_and_evaluate(config3, run_dir, (3,), reporter=reporter)
    finally:
        reporter.close()
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
            stats = {m: mean_interval([r[m] for r in found]) for m in ("pxap", "pointing", "lesion_pixels")}
            diff = {m: mean_interval([r[m] - q[m] for r, q in paired]) for m in ("pxap", "pointing")}
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
            err = [p[metric]["half_width"] or 0.0 for _, p in points]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=function,
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
    parser.add_argument("--report", action="store_true", help="only write acquisition.md/.png from results.jsonl")
    args = parser.parse_args(argv)
    if args.report:
        print(report(pathlib.Path(args.workdir) / "results.jsonl", pathlib.Path(args.workdir)))
        return 0
    from pcam_jax import runtime

    runtime.configure()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results.jsonl"
    done = _done(results)
    budgets = [int(b) for b in args.budgets.split(",")]
    worlds = [prepare_seed(int(seed), workdir) for seed in args.seeds.split(",")]
    for budget in budgets:  # every seed of a budget before the next budget: a cut run still pairs seeds
        for world in worlds:
            for function in args.functions.split(","):
                if (world["seed"], function, budget) in done:
                    continue
                row = run_one(world, function, budget, workdir)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[(world["seed"], function, budget)] = row
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
