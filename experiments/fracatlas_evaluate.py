"""Score a FracAtlas run once on its test split (or a labelled folder), with the map methods a
2-core CPU affords: `pcam-jax evaluate` minus the four that forward the network once per channel
or step (Score-CAM, AblationCAM: 128 forwards per image; Integrated Gradients, SmoothGrad: 32).

    python experiments/fracatlas_evaluate.py RUN [--external FOLDER] [--out DIR]
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
    args = parser.parse_args()
    methods = {s: tuple(m for m in stages.get(s).map_methods if m not in EXPENSIVE)
               for s in checkpointing.trained_stages(args.workdir)}
    assert all(m in maps.METHODS for ms in methods.values() for m in ms)
    start = time.perf_counter()
    evaluate_workdir(args.workdir, methods=methods, external=args.external, out_dir=args.out)
    print(f"evaluate wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
