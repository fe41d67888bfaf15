"""Stage-1 train step variants timed in turns in ONE process: conv/pool rewrites and compute dtype.

    python experiments/benchmarks/step_ablation.py                          # b16@320 and b32@128
    python experiments/benchmarks/step_ablation.py --shapes 32x128 --variants xla/xla/float32,flipped_dx+s2d/strided/float32

A variant is ``CONV_IMPL/POOL_IMPL/DTYPE`` (`pcam_jax.models.NetworkSpec`). Each gets its own
jitted step; rounds call one step of each variant in turn (A, B, C, A, B, C, ...), so the
drift of a shared machine touches all alike. XLA flags are per process: compare those with
process-level A/B pairs instead (`vs_pytorch.py`, or two runs of `train_step.py`). Prints, per
variant, the median wall seconds, the median process CPU seconds per step (less sensitive to
other jobs) and the ratio to the first variant (above 1: faster), and the loss after the
timed steps, so a variant that changes the numbers shows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)
from train_step import make_batch  # noqa: E402

DEFAULT_VARIANTS = ("flipped_dx+s2d/strided/float32", "xla/xla/float32", "xla/strided/float32",
                    "flipped_dx+s2d/strided/bfloat16")


def make_step(variant: str, batch: int, size: int):
    import jax

    from pcam_jax.configs import get_config
    from pcam_jax.models import create_model
    from pcam_jax.training import state as state_lib
    from pcam_jax.training import steps

    conv_impl, pool_impl, dtype = variant.split("/")
    config = get_config("base")
    config.model.conv_impl, config.model.pool_impl, config.model.dtype = conv_impl, pool_impl, dtype
    config.data.image_size, config.data.batch_size = size, batch
    model = create_model(config.model)
    holder = {"state": state_lib.create_train_state(config, model, jax.random.key(0)), "loss": None}
    step = jax.jit(steps.make_train_step(1, config, model), donate_argnums=0)

    def run(batch_):
        holder["state"], metrics = step(holder["state"], batch_)
        holder["loss"] = metrics["loss"]
        return metrics["loss"]

    return run, holder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x320,32x128", help="comma-separated BATCHxSIZE")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated CONV/POOL/DTYPE")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header())
    import jax
    import numpy as np

    variants = args.variants.split(",")
    for shape in args.shapes.split(","):
        b, s = (int(v) for v in shape.lower().split("x"))
        data = jax.device_put(make_batch(np.random.default_rng(0), b, s))
        runs = {v: make_step(v, b, s) for v in variants}
        for v, (run, _) in runs.items():
            for _ in range(args.warmup):
                jax.block_until_ready(run(data))
        print(f"# warmed up: {shape}", flush=True)  # a profiler can attach now (compilation done)
        wall = {v: [] for v in variants}
        cpu = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v, (run, _) in runs.items():
                w0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(run(data))
                wall[v].append(time.perf_counter() - w0)
                cpu[v].append(time.process_time() - c0)
        base_w, base_c = statistics.median(wall[variants[0]]), statistics.median(cpu[variants[0]])
        rows = []
        for v in variants:
            w, c = statistics.median(wall[v]), statistics.median(cpu[v])
            row = {"bench": "step_ablation", "batch": b, "size": s, "variant": v, "median_s": w, "cpu_s": c,
                   "speedup_wall": base_w / w, "speedup_cpu": base_c / c,
                   "loss": float(runs[v][1]["loss"])}
            rows.append(row)
            print(common.json_line(row), flush=True)
        print(common.format_table(rows, [("variant", "variant", ""), ("median_s", "wall s", ".4f"),
                                         ("cpu_s", "cpu s", ".4f"), ("speedup_wall", "x wall", ".3f"),
                                         ("speedup_cpu", "x cpu", ".3f"), ("loss", "loss", ".6f")]))


if __name__ == "__main__":
    main()
