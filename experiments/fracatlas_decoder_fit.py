"""Does the stage-3 (or stage-4) decoder fit its own labels? Its localisation on the labelled train fractures it
was trained on, the unlabelled train fractures and model_selection's, and its raw output (sigmoid,
before min-max normalisation) inside and outside the fractures. docs/RESULTS.md section 6.

    python experiments/fracatlas_decoder_fit.py RUN [--step STEP] [--stage 3|4] [--data_dir DATA]

Nothing here reads the test split: this is what recipe choices may be made on.
"""

import argparse

import numpy as np

from pcam_jax import maps as maps_lib
from pcam_jax.data import fracatlas, pipeline
from pcam_jax.metrics import localisation
from pcam_jax.run import analysis


def scored_images(config, split: str, data_dir, labelled: set[str] | None):
    """(images, masks, is_labelled) of the split's fractures at the model's size."""
    records = pipeline.load_records(config, split, data_dir).filter(lambda r: r["has_mask"])
    images, masks, flags = [], [], []
    for batch in pipeline.eval_batches(config, records):
        valid = batch["valid"].astype(bool)
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in batch["path"]]
        images.append(batch["image"][valid])
        masks.append(batch["mask"][valid] > 0.5)
        flags.append(np.array([labelled is not None and p in labelled for p in paths])[valid])
    return np.concatenate(images), np.concatenate(masks), np.concatenate(flags)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--step", default="best", help="best, latest or a step number")
    parser.add_argument("--stage", type=int, default=3, choices=(3, 4))
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    run = analysis.load(args.workdir, args.stage, int(args.step) if args.step.isdigit() else args.step)
    config = run.config
    data_dir = args.data_dir or config.data.data_dir or None
    tolerance = localisation.pointing_tolerance(int(config.data.image_size), float(config.eval.pointing_tolerance))
    train_records = pipeline.load_records(config, "train", data_dir).filter(lambda r: r["has_mask"])
    masked = [p.decode() for p in train_records.map(lambda r: r["path"]).as_numpy_iterator()]
    labelled = fracatlas.labelled_paths(masked, int(config.stage3.num_labelled), int(config.stage3.labelled_seed))
    q = lambda a: "/".join(f"{v:.3g}" for v in np.percentile(a, [10, 50, 90]))
    print("| images | n | pointing game | PxAP | fracture mean | fracture max | background max "
          "| background share >= fracture max | area >= 0.5 / fracture area |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split in ("train", "model_selection"):
        images, masks, is_labelled = scored_images(config, split, data_dir, labelled if split == "train" else None)
        raw = run.raw_maps(images, methods=("decoder",))["decoder"].reshape(masks.shape)
        groups = ({"labelled train (seen)": is_labelled, "unlabelled train": ~is_labelled} if split == "train"
                  else {"model_selection": np.ones(len(images), bool)})
        for name, rows in groups.items():
            if not rows.any():   # no row to report (every train mask labelled: no unlabelled one)
                continue
            r, m = raw[rows], masks[rows]
            normalised = np.asarray(maps_lib.postprocess(r, *m.shape[1:]))   # the map evaluate scores
            pg = localisation.pointing_game(normalised, m, tolerance).mean()
            pxap = localisation.pxap(normalised, m)
            fracture_max = np.array([x[k].max() for x, k in zip(r, m)])
            print(f"| {name} | {rows.sum()} | {pg:.3f} | {pxap:.3f} "
                  f"| {q([x[k].mean() for x, k in zip(r, m)])} | {q(fracture_max)} "
                  f"| {q([x[~k].max() for x, k in zip(r, m)])} "
                  f"| {q([(x[~k] >= t).mean() for x, k, t in zip(r, m, fracture_max)])} "
                  f"| {q([(x >= 0.5).mean() / k.mean() for x, k in zip(r, m)])} |")
    print("(10th/50th/90th percentiles over images of the raw decoder output; pointing tolerance "
          f"{tolerance:g} px)")


if __name__ == "__main__":
    main()
