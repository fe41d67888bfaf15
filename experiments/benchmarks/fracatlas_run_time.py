"""How long one FracAtlas run of the `fracatlas` preset takes on this machine, from one epoch per stage.

    python experiments/benchmarks/fracatlas_run_time.py --data_dir DATA [--workdir /tmp/fa-time]

Trains each of stages 1-4 for one epoch in a scratch work directory (the preset's everything else:
256 px, batch 16, device augmentation from the uint8 cache), times each epoch after its first
`--warmup` steps have compiled, and prints seconds per epoch, images/s, and the full preset's time
(the preset's epochs x the epoch time, plus the measured start-up). Evaluation is timed separately
(`experiments/fracatlas_evaluate.py` prints its wall). Run it on a quiet machine: it says its load.
"""

import argparse
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402  (experiments/benchmarks/common.py)

from pcam_jax import configs, runtime  # noqa: E402
from pcam_jax.training import loop, stages as stages_lib  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workdir", default="/tmp/pcam-jax-fracatlas-time")
    args = parser.parse_args()
    runtime.configure()
    preset = configs.get_config("fracatlas")
    config = configs.get_config("fracatlas")
    for s in (1, 2, 3, 4):
        stages_lib.get(s).settings(config).num_epochs = 1
    workdir = pathlib.Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    print(common.environment_header())
    print(f"# load average before: {os.getloadavg()}")
    start = time.perf_counter()
    results = loop.train_and_evaluate(config, workdir, stages=(1, 2, 3, 4), data_dir=args.data_dir)
    total = time.perf_counter() - start
    first_epoch = sum(r["seconds"] for r in results.values())
    full = 0.0
    print("| stage | one epoch (s) | preset epochs | preset stage time (min) |")
    print("|---|---|---|---|")
    for s, r in results.items():
        epochs = int(stages_lib.get(s).settings(preset).num_epochs)
        full += r["seconds"] * epochs
        print(f"| {s} | {r['seconds']:.0f} | {epochs} | {r['seconds'] * epochs / 60:.1f} |")
    # the first epoch of each stage pays its compilation: the estimate is an upper bound by that much
    print(f"one epoch of each stage: {first_epoch:.0f} s (process {total:.0f} s); the preset's stages 1-4: "
          f"~{full / 60:.0f} min, stages 1-3: ~{(full - results[4]['seconds'] * int(preset.stage4.num_epochs)) / 60:.0f} min "
          f"(upper bound: each epoch here includes its stage's compilation); load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
