"""The localisation section of `pcam-jax evaluate` alone, on the maps an evaluation saved.

    pcam-jax evaluate --workdir RUN --out OUT ... ; python -c ...evaluate_workdir(..., save_maps=True)
    python experiments/benchmarks/localisation_metrics.py OUT/maps.npz [--images 32] [--methods 3]

For each map method in maps.npz (`pcam_jax.evaluation.evaluate._save_maps`): CPU seconds of
each piece the section computes (threshold chosen on the held-out maps, pointing games, IoU/Dice,
PxAP, the PR curve, MaxBoxAccV2), and MaxBoxAccV2's boxes two ways: the sweep over every
threshold at once (`boxes.wsolevaluation_boxes_all_thresholds`, what evaluate runs) and a
labelling of each thresholded map (`boxes.candidate_boxes`, as before), checked equal. CPU
seconds (one thread each) are steadier than wall seconds on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402

import common  # noqa: E402  (experiments/benchmarks/common.py)
from pcam_jax.metrics import boxes, localisation as loc  # noqa: E402


def cpu_seconds(fn):
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def best_iou_by_labelling(maps, masks, thresholds):
    """MaxBoxAccV2's (N, T) best IoUs from one labelling per thresholded map (the former path)."""
    best = np.zeros((len(maps), len(thresholds)))
    for i, (m, mask) in enumerate(zip(maps, masks)):
        _, gt = boxes.component_boxes(mask)
        plane, proposed = boxes.candidate_boxes(boxes.binarise(m[None], thresholds, "wsolevaluation"),
                                                "wsolevaluation")
        if len(proposed) and len(gt):
            np.maximum.at(best[i], plane[:, 1], boxes.box_iou(proposed[:, None], gt[None]).max(axis=1))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", help="maps.npz written by evaluate_workdir(..., save_maps=True)")
    parser.add_argument("--images", type=int, default=0, help="first N test images only (0: all)")
    parser.add_argument("--methods", type=int, default=0, help="first N map methods only (0: all)")
    args = parser.parse_args()
    print(common.environment_header())
    data = np.load(args.maps)
    n = args.images or None
    masks, held_masks = data["test_masks"][:n].astype(bool), data["held_masks"].astype(bool)
    names = [k[len("test/"):] for k in data.files if k.startswith("test/")][:args.methods or None]
    thresholds = loc.DEFAULT_THRESHOLDS
    totals: dict[str, float] = {}
    for name in names:
        maps, held = data[f"test/{name}"][:n].astype(np.float64), data[f"held/{name}"].astype(np.float64)
        row = {}
        row["choose_threshold"], tau = cpu_seconds(lambda: loc.choose_threshold(held, held_masks))
        row["pointing_games"], _ = cpu_seconds(lambda: (loc.pointing_game(maps, masks, 12.0),
                                                        loc.energy_pointing_game(maps, masks)))
        row["iou_dice"], _ = cpu_seconds(lambda: loc.iou_and_dice(maps, masks, tau))
        row["pxap"], _ = cpu_seconds(lambda: loc.pxap(maps, masks))
        row["pr_curve"], _ = cpu_seconds(lambda: loc.pixel_precision_recall(maps, masks))
        row["maxboxacc_sweep"], best = cpu_seconds(lambda: loc.best_box_iou(maps, masks))
        row["maxboxacc_labelling"], reference = cpu_seconds(lambda: best_iou_by_labelling(maps, masks, thresholds))
        if not np.array_equal(best, reference):
            raise SystemExit(f"{name}: the sweep's best box IoUs differ from labelling each threshold")
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + value
        print(common.json_line({"bench": "localisation_metrics", "map": name, "images": len(maps),
                                **{k: round(v, 3) for k, v in row.items()}}), flush=True)
    print(common.json_line({"bench": "localisation_total", "maps": len(names), **{k: round(v, 2) for k, v in totals.items()}}))
    section_before = sum(v for k, v in totals.items() if k != "maxboxacc_sweep")
    section_after = sum(v for k, v in totals.items() if k != "maxboxacc_labelling")
    print(f"\nCPU seconds, {len(names)} maps x {len(masks)} test images (held-out: {len(held_masks)}):")
    for key, value in totals.items():
        print(f"  {key:<22} {value:8.2f}")
    print(f"  section with labelling: {section_before:.1f} s; with the sweep: {section_after:.1f} s "
          f"({section_before / max(section_after, 1e-9):.1f}x)")


if __name__ == "__main__":
    main()
