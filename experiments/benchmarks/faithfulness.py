"""Seconds per batch for the faithfulness metrics on the paper's network (config `base`).

    python experiments/benchmarks/faithfulness.py                      # batch 16 at 320x320
    python experiments/benchmarks/faithfulness.py --num-steps 100 --rounds 5
    python experiments/benchmarks/faithfulness.py --batch 4 --size 64 --num-steps 10 --rounds 1

Random initialisation plus a few training-mode forward passes (non-trivial BatchNorm
statistics; see experiments/benchmarks/maps.py), random images in [0, 1], the explained map
= positive CAM of the abnormal class brought to the image size (`pcam_jax.maps.postprocess`),
computed once outside the timing. Each row is one jitted program for the whole batch:

- forward: the probability of the abnormal class (the unit of cost);
- deletion / insertion: ``--num-steps + 1`` perturbed forwards per image (baseline 0 and the
  blurred image, RISE's), ``--chunk`` steps per batched call;
- ROAD MoRF / LeRF: the 9 fractions 0.1..0.9, noisy linear imputation with
  ``--cg-iterations`` conjugate-gradient iterations, ``--road-chunk`` fractions per call;
- confidence change: average drop / increase (one masked forward).

Median of ``--rounds`` timed calls after ``--warmup`` calls, the rows in turns (one call of
each per round). "forwards" counts the network evaluations per image, "vs forward" the time
relative to one batched forward.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--num-steps", type=int, default=50, help="deletion/insertion steps (curve has +1 points)")
    parser.add_argument("--chunk", type=int, default=8, help="deletion/insertion steps per batched forward")
    parser.add_argument("--road-chunk", type=int, default=3, help="ROAD fractions per batched forward")
    parser.add_argument("--cg-iterations", type=int, default=150, help="ROAD imputation CG iterations")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rows", default="forward,deletion,insertion,road_morf,road_lerf,confidence",
                        help="comma-separated subset of the rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    common.apply_project_xla_flags()
    import jax
    import jax.numpy as jnp

    from maps import build, explained_map  # experiments/benchmarks/maps.py: network with BN statistics, map
    from pcam_jax.trust import faithfulness as fa

    print(common.environment_header(), flush=True)
    model, variables, images = build(args.size, args.batch, args.seed)
    targets = jnp.ones((args.batch,), jnp.int32)  # the abnormal class, as the lesion map

    def prob_fn_for(v):
        return fa.target_probability(lambda x: model.apply(v, x)[0], targets)

    saliency = explained_map(model, variables, images)
    key = jax.random.key(args.seed)
    steps, road = args.num_steps, len(fa.ROAD_FRACTIONS)
    programs = {
        "forward": (jax.jit(lambda v, x, s: prob_fn_for(v)(x)), 1),
        "deletion": (jax.jit(lambda v, x, s: fa.area_under_curve(fa.deletion_curve(
            prob_fn_for(v), x, s, 0.0, steps, args.chunk))), steps + 1),
        "insertion": (jax.jit(lambda v, x, s: fa.area_under_curve(fa.insertion_curve(
            prob_fn_for(v), x, s, None, steps, args.chunk))), steps + 1),
        "road_morf": (jax.jit(lambda v, x, s: fa.road_curve(
            prob_fn_for(v), x, s, key, most_relevant_first=True, num_iterations=args.cg_iterations,
            chunk=args.road_chunk)), road),
        "road_lerf": (jax.jit(lambda v, x, s: fa.road_curve(
            prob_fn_for(v), x, s, key, most_relevant_first=False, num_iterations=args.cg_iterations,
            chunk=args.road_chunk)), road),
        "confidence": (jax.jit(lambda v, x, s: fa.confidence_change(prob_fn_for(v), x, s)["drop"]), 2),
    }
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in programs]
    if unknown or not wanted:
        parser.error(f"unknown --rows {unknown or wanted}; choose from {','.join(programs)}")
    timings = common.timeit_interleaved({name: (lambda fn=programs[name][0]: fn(variables, images, saliency))
                                         for name in wanted}, warmup=args.warmup, rounds=args.rounds)
    values = {name: jnp.mean(programs[name][0](variables, images, saliency)) for name in wanted}
    rows = []
    for name in wanted:
        median, low, high = timings[name]
        row = {"bench": "faithfulness", "metric": name, "batch": args.batch, "size": args.size,
               "num_steps": steps if name in ("deletion", "insertion") else None,
               "forwards_per_image": programs[name][1], "rounds": args.rounds,
               "median_s": median, "min_s": low, "max_s": high, "mean_value": float(values[name])}
        print(common.json_line(row), flush=True)
        rows.append(row)
    base = timings["forward"][0] if "forward" in timings else None
    table = [dict(row, vs_forward=(f"{row['median_s'] / base:.1f}x" if base else None)) for row in rows]
    print()
    print(common.format_table(table, [
        ("metric", "metric", ""), ("forwards_per_image", "forwards", "d"), ("median_s", "s/batch (median)", ".3f"),
        ("min_s", "min s", ".3f"), ("max_s", "max s", ".3f"), ("mean_value", "batch mean", ".4f"),
        ("vs_forward", "vs forward", ""),
    ]))


if __name__ == "__main__":
    main()
