"""Score a FracAtlas run once on its test split (or a labelled folder), with the map methods a
2-core CPU affords: `pcam-jax evaluate` minus the four that forward the network once per channel
or step (Score-CAM, AblationCAM: 128 forwards per image; Integrated Gradients, SmoothGrad: 32).

    python experiments/fracatlas_evaluate.py RUN [--external FOLDER] [--out DIR] [--save_maps]
        [--stages 1,2,3] [--which best|latest|STEP]

The seeded study (experiments/fracatlas_seeds.py) scores stages 1-3 at their best checkpoints (the
criterion each stage was ranked by: model_selection AUROC, or decoder PxAP on model_selection's
fractures for stage 3 with ``stage3.select_by=localisation``, the preset's) with ``--stages 1,2,3
--save_maps``, and the stage-4 segmenter at its best (decoder PxAP likewise) with ``--stages 4
--out RUN/eval_stage4 --save_maps``; ``--which STEP`` scores one checkpoint instead
(experiments/rerank_checkpoints.py says which).
"""

import argparse
import time

from pcam_jax import maps
from pcam_jax.evaluation.evaluate import evaluate_workdir
from pcam_jax.training import checkpointing, stages

EXPENSIVE = ("score_cam", "ablation_cam", "integrated_gradients", "smoothgrad")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--external", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--stages", default=None, help="e.g. 1,2,3 (default: every trained stage)")
    parser.add_argument("--which", default="best", help="best, latest or a step number")
    parser.add_argument("--save_maps", action="store_true", help="also write maps.npz (the maps scored)")
    args = parser.parse_args()
    trained = checkpointing.trained_stages(args.workdir)
    chosen = [int(s) for s in args.stages.split(",")] if args.stages else trained
    methods = {s: tuple(m for m in stages.get(s).map_methods if m not in EXPENSIVE) for s in chosen if s in trained}
    assert all(m in maps.METHODS for ms in methods.values() for m in ms)
    start = time.perf_counter()
    which = int(args.which) if args.which.isdigit() else args.which
    evaluate_workdir(args.workdir, methods=methods, external=args.external, out_dir=args.out, stages=list(methods),
                     which=which, save_maps=args.save_maps)
    print(f"evaluate wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
