"""Example analysis script: load a trained run, predict, and plot maps of a few test images.

    python experiments/analysis_example.py --workdir work/demo --out work/demo/analysis.png

Uses only the public analysis API (`pcam_jax.load`) plus the synthetic generator for
images; point it at your own images by replacing `example_images`.
"""

import argparse

import numpy as np


def example_images(config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n abnormal synthetic radiographs (uint8) and their lesion masks, unseen in training."""
    from pcam_jax.data import synthetic

    images, masks = [], []
    for i in range(n):  # indices far past every split of the run's dataset
        record = synthetic.generate_for_config(config.synthetic, 10_000_000 + i, label=1)
        images.append(record["image"])
        masks.append(record["lesion_mask"])
    return np.stack(images), np.stack(masks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--out", default="analysis.png")
    parser.add_argument("-n", type=int, default=4)
    args = parser.parse_args()

    import pcam_jax
    from pcam_jax.evaluation.figures import figure2

    run = pcam_jax.load(args.workdir, stage=args.stage)
    images, masks = example_images(run.config, args.n)
    probs = run.predict(images)
    methods = ["cam", "positive_cam", "grad_cam"] + (["decoder"] if args.stage == 3 else [])
    maps = {m: run.maps(images, method=m) for m in methods}
    titles = [f"p(abnormal) = {p:.2f}" for p in probs]
    figure2(images / 255.0, masks, maps, titles=titles).savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"stage {run.stage} (step {run.step}): p(abnormal) = {np.round(probs, 3).tolist()}; wrote {args.out}")


if __name__ == "__main__":
    main()
