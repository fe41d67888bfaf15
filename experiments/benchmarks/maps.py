"""Activation maps per second for each method on the default network (the paper's ResNet).

    python experiments/benchmarks/maps.py                        # batch 16 at 320x320, 10 rounds
    python experiments/benchmarks/maps.py --score-cam            # adds Score-CAM (128 masked forwards per image)
    python experiments/benchmarks/maps.py --methods cam,grad_cam --batch 4 --size 64 --rounds 2

Random initialisation plus a few training-mode forward passes (non-trivial BatchNorm
statistics), random images in [0, 1], targets = the predicted class (pytorch-grad-cam's
default). Rows: a plain jitted forward; each method alone as one jitted call (forward, plus
a VJP for the gradient methods, plus the masked forwards for Score-CAM); and all requested
methods in one jitted `pcam_jax.maps.all_maps` call sharing the forward. Median of
``--rounds`` timed calls after warm-up, the rows timed in turns (one call of each per round)
so that machine drift touches all alike (Score-CAM: at most 3 rounds, 1 warm-up, alone).

Compare with pytorch-grad-cam 1.5.7 on the same network and batch, run in the same session:
    /tmp/torch-ref/bin/python experiments/benchmarks/torch_twin/torch_reference.py maps --batch 16 --size 320
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)

DEFAULT_METHODS = "cam,positive_cam,grad_cam,grad_cam_pp,layer_cam"


def build(size: int, batch: int, seed: int):
    """Model, variables with BatchNorm statistics from a few training-mode passes, images."""
    import jax

    from pcam_jax.models import NetworkSpec, create_model, init_variables

    model = create_model(NetworkSpec())
    variables = jax.jit(lambda key: init_variables(model, key, size))(jax.random.key(seed))

    @jax.jit
    def update_batch_stats(variables, images):
        _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return {"params": variables["params"], "batch_stats": updates["batch_stats"]}

    keys = jax.random.split(jax.random.key(seed + 1), 4)
    for key in keys[:3]:
        variables = update_batch_stats(variables, jax.random.uniform(key, (batch, size, size, 1)))
    images = jax.random.uniform(keys[3], (batch, size, size, 1))
    return model, variables, images


def explained_map(model, variables, images):
    """The map the faithfulness benchmarks explain: positive CAM of the abnormal class, brought to
    the image size (`pcam_jax.maps.postprocess`), (B, H, W) in [0, 1]."""
    import jax
    import jax.numpy as jnp

    from pcam_jax import maps
    from pcam_jax.models import ABNORMAL, head_kernel

    size = images.shape[1]
    targets = jnp.full((images.shape[0],), ABNORMAL, jnp.int32)
    return jax.jit(lambda v, x: maps.postprocess(maps.positive_cam(
        model.apply(v, x)[1], head_kernel(v["params"]), targets), size, size))(variables, images)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated, from pcam_jax.maps.METHODS")
    parser.add_argument("--score-cam", action="store_true", help="add score_cam (slow: a forward per channel)")
    parser.add_argument("--chunk", type=int, default=32, help="Score-CAM channels per batched forward")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    common.apply_project_xla_flags()
    import jax

    from pcam_jax import maps

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.score_cam and "score_cam" not in methods:
        methods.append("score_cam")
    unknown = [m for m in methods if m not in maps.METHODS]
    if unknown or not methods:
        parser.error(f"unknown --methods {unknown or methods}; choose from {','.join(maps.METHODS)}")

    print(common.environment_header(), flush=True)
    model, variables, images = build(args.size, args.batch, args.seed)
    forward = jax.jit(lambda v, x: model.apply(v, x))

    # (name, fn, maps per image); all but Score-CAM are timed in turns, one call each per round.
    entries = [("forward", forward, 0)] + [(m, maps.make_all_maps_fn(model, (m,), args.chunk), 1) for m in methods]
    if len(methods) > 1:
        entries.append((f"all_maps({len(methods)} methods)", maps.make_all_maps_fn(model, tuple(methods), args.chunk),
                        len(methods)))
    slow = {name for name, _, _ in entries if "score_cam" in name}
    timings = common.timeit_interleaved({name: (lambda fn=fn: fn(variables, images))
                                         for name, fn, _ in entries if name not in slow},
                                        warmup=args.warmup, rounds=args.rounds)
    for name, fn, _ in entries:
        if name in slow:  # minutes per round: 1 warm-up, at most 3 rounds, timed alone
            timings[name] = common.timeit(lambda fn=fn: fn(variables, images), warmup=1, rounds=min(args.rounds, 3))
    rows = []
    for name, _, num_maps in entries:
        median, low, high = timings[name]
        row = {"bench": "maps", "method": name, "batch": args.batch, "size": args.size,
               "rounds": min(args.rounds, 3) if name in slow else args.rounds,
               "median_s": median, "min_s": low, "max_s": high, "images_per_s": args.batch / median,
               "maps_per_s": num_maps * args.batch / median if num_maps else None}
        print(common.json_line(row), flush=True)
        rows.append(row)
    base = rows[0]["median_s"]
    table = [dict(row, median_ms=1e3 * row["median_s"], min_ms=1e3 * row["min_s"], max_ms=1e3 * row["max_s"],
                  vs_forward=f"{row['median_s'] / base:.3f}x") for row in rows]
    print()
    print(common.format_table(table, [
        ("method", "method", ""), ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
        ("max_ms", "max ms", ".1f"), ("images_per_s", "images/s", ".1f"), ("maps_per_s", "maps/s", ".1f"),
        ("vs_forward", "time vs forward", ""),
    ]))


if __name__ == "__main__":
    main()
