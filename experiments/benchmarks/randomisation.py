"""Seconds for the sanity checks (`pcam_jax.trust.sanity`) on the paper's network: MPRT and random logit.

    python experiments/benchmarks/randomisation.py                       # 16 images at 320 px, the six original methods
    python experiments/benchmarks/randomisation.py --batch 4 --size 64 --methods cam,grad_cam   # a quick look

MPRT = cascading model-parameter randomisation (Adebayo et al. 2018): the head, then the ten
encoder blocks from the top down, then the stem, re-initialised one after another (12 variable
sets with the original), every method's map for every set, and SSIM / Spearman of each map to
the original's, in one jitted program (`sanity.cascading_randomisation`: a `lax.map` over the
stacked variable sets). Network as experiments/benchmarks/maps.py builds it (seeded init plus
BatchNorm statistics). "first call" includes compilation; the timed rows are the median of
``--rounds`` later calls (the program is compiled once per maps function and shape).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)

ORIGINAL_SIX = "cam,positive_cam,grad_cam,grad_cam_pp,layer_cam,score_cam"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--methods", default=ORIGINAL_SIX)
    parser.add_argument("--chunk", type=int, default=32, help="Score-CAM channels per batched forward")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    common.apply_project_xla_flags()
    import jax
    import jax.numpy as jnp

    from maps import build  # experiments/benchmarks/maps.py
    from pcam_jax import maps
    from pcam_jax.trust import sanity
    from pcam_jax.models import init_variables

    print(common.environment_header(), flush=True)
    methods = tuple(m for m in args.methods.split(",") if m)
    model, variables, images = build(args.size, args.batch, args.seed)
    fresh = init_variables(model, jax.random.key(args.seed + 7919), args.size)
    targets = jnp.ones((args.batch,), jnp.int32)
    maps_fn = maps.make_all_maps_fn(model, methods, chunk=args.chunk)
    checks = {
        "mprt": lambda: sanity.cascading_randomisation(maps_fn, variables, fresh, images, targets),
        "random_logit": lambda: sanity.random_logit_test(maps_fn, variables, images, targets, 2, jax.random.key(0)),
    }
    rows = []
    for name, fn in checks.items():
        started = time.perf_counter()
        result = fn()  # results come back as numpy: the call has finished
        first = time.perf_counter() - started
        median, low, high = common.timeit(fn, warmup=0, rounds=args.rounds)
        sets = len(result["steps"]) if name == "mprt" else 2
        row = {"bench": "sanity", "check": name, "methods": len(methods), "batch": args.batch, "size": args.size,
               "variable_sets": sets, "first_call_s": first, "median_s": median, "min_s": low, "max_s": high,
               "final_ssim": {m: float(jnp.nanmean(jnp.asarray(result["ssim"][m]).reshape(-1, args.batch)[-1]))
                              for m in methods}}
        print(common.json_line(row), flush=True)
        rows.append(row)
    print()
    print(f"methods: {', '.join(methods)}")
    print(common.format_table(rows, [
        ("check", "check", ""), ("variable_sets", "variable sets", "d"), ("first_call_s", "first call s", ".1f"),
        ("median_s", "s (median)", ".1f"), ("min_s", "min s", ".1f"), ("max_s", "max s", ".1f"),
    ]))


if __name__ == "__main__":
    main()
