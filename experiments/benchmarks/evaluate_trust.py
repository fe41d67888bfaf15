"""What the trust section of `pcam-jax evaluate` (faithfulness and sanity, `config.eval.trust_images`)
would cost on a run, from the maps an evaluation saved (`evaluate_workdir(..., save_maps=True)`).

    python experiments/benchmarks/evaluate_sections.py RUN --data_dir DATA --out OUT --save_maps
    python experiments/benchmarks/evaluate_trust.py RUN --data_dir DATA --maps OUT/maps.npz --images 16

Runs `pcam_jax.evaluation.trust.trust_report` as evaluate would with ``trust_images=IMAGES``
(the first IMAGES test images with a lesion, every stage's maps) and prints its sections' wall
and CPU seconds; the figures go to OUT/trustIMAGES.json. The FracAtlas preset ships
``trust_images=0`` (docs/PERFORMANCE.md says what turning it on costs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--maps", required=True, help="maps.npz of an evaluation of WORKDIR")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header())
    import numpy as np

    from pcam_jax.data import pipeline, resolve_data_dir
    from pcam_jax.evaluation import progress, trust
    from pcam_jax.run import analysis
    from pcam_jax.training import checkpointing, stages as stages_lib

    stages = checkpointing.trained_stages(args.workdir)
    runs = {s: analysis.load(args.workdir, s, "best") for s in stages}
    config = runs[stages[-1]].config
    with config.unlocked():
        config.eval.trust_images = args.images
    records = pipeline.load_records(config, "test", resolve_data_dir(config, args.data_dir))
    images = []  # the first test images with a lesion, in the order evaluate maps them
    for batch in pipeline.eval_batches(config, records):
        lesion = batch["valid"] & batch["has_mask"] & batch["mask"].reshape(len(batch["valid"]), -1).any(axis=1)
        images.extend(batch["image"][lesion][..., 0])
        if len(images) >= args.images:
            break
    saved = np.load(args.maps)
    methods = {s: stages_lib.get(s).map_methods for s in stages}
    test = {"images": np.stack(images[:args.images]),
            "maps": {f"stage{s}/{m}": saved[f"test/stage{s}/{m}"][:args.images] for s in stages for m in methods[s]}}
    sections = progress.Sections(show=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = trust.trust_report(runs, test, methods, config, sections)
    for name, wall in sections.seconds.items():
        print(common.json_line({"bench": "evaluate_trust_section", "section": name, "wall_s": wall,
                                "cpu_s": sections.cpu_seconds[name]}))
    print(common.json_line({"bench": "evaluate_trust_total", "images": len(test["images"]),
                            "maps": sum(map(len, methods.values())), "wall_s": time.perf_counter() - start,
                            "cpu_s": time.process_time() - cpu_start}))
    result.pop("_cascade", None)
    out = pathlib.Path(args.maps).with_name(f"trust{args.images}.json")
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
