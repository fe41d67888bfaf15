"""`pcam-jax evaluate`, section by section: wall and CPU seconds of each named section.

    # a FracAtlas-sized stand-in: 300 synthetic test images at 256 px, ~21% with a lesion
    # (FracAtlas' test split: 299 images, 62 fractures), all three stages trained briefly
    python -m pcam_jax.cli train --config synthetic --workdir /tmp/eval256 \
        --config.data.image_size=256 --config.synthetic.image_size=256 \
        --config.synthetic.num_train=128 --config.synthetic.num_model_selection=32 \
        --config.synthetic.num_test=300 --config.synthetic.abnormal_prevalence=0.21 \
        --config.synthetic.num_labelled=16 --config.synthetic.num_heldout_labelled=40 \
        --config.stage1.num_epochs=1 --config.stage2.num_epochs=1 --config.stage3.num_epochs=1 \
        --config.data.data_dir=/tmp/eval256/data
    python experiments/benchmarks/evaluate_sections.py /tmp/eval256 --out /tmp/eval256/eval-bench

    # the FracAtlas run itself (docs/PERFORMANCE.md), its maps kept for localisation_metrics.py
    python experiments/benchmarks/evaluate_sections.py /work/fa/runs/s0 --data_dir /work/fa/data \
        --out /tmp/fa-eval --save_maps

The sections are those `pcam_jax.evaluation.progress` shows as progress bars while
`pcam-jax evaluate` runs (their seconds are also in metrics.json). CPU seconds are the
process's, all threads: on a machine shared with other jobs they stretch less than wall
seconds, and on an idle 2-core machine the wall time is about CPU / 1.3-1.9 (measured ratio
printed). The "shortcuts" sections exist on synthetic data only (FracAtlas has none).
How long the stages trained does not matter here: an evaluation costs the same whatever the weights.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--out", default=None, help="output directory (default: WORKDIR/eval)")
    parser.add_argument("--data_dir", default=None, help="prepared data (default: the run's config)")
    parser.add_argument("--save_maps", action="store_true", help="also write OUT/maps.npz")
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header())
    from pcam_jax.evaluation import evaluate

    metrics = evaluate.evaluate_workdir(args.workdir, out_dir=args.out, data_dir=args.data_dir, verbose=True,
                                        save_maps=args.save_maps)
    wall, cpu = metrics["section_seconds"], metrics["section_cpu_seconds"]
    for name in wall:
        print(common.json_line({"bench": "evaluate_section", "section": name, "wall_s": wall[name],
                                "cpu_s": cpu[name]}))
    total_wall, total_cpu = sum(wall.values()), sum(cpu.values())
    print(common.json_line({"bench": "evaluate_total", "wall_s": metrics["seconds"], "sections_wall_s": total_wall,
                            "cpu_s": total_cpu, "cpu_per_wall": total_cpu / max(total_wall, 1e-9)}))


if __name__ == "__main__":
    main()
