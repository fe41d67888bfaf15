"""Train-step throughput per stage on the default network (the paper's ResNet, 793k params).

    python experiments/benchmarks/train_step.py                       # b16@320 and b32@128, stages 1-3
    python experiments/benchmarks/train_step.py --shapes 16x320 --stages 1 --steps 10
    python experiments/benchmarks/train_step.py --dtype bfloat16      # accelerators

Prints one table (median of timed steps after warm-up, images per second) with the
machine, versions and command, plus one JSON line per row. Stage 2 and 3 ratios are
against stage 1 at the same shape. To check that a later stage costs what its extra passes
cost and no more, the passes are also timed alone (skip with --no-parts):

- masked pass (stage 2): eval-mode forward + backward to the parameters *and* the image
  (the mask is differentiable, so the gradient reaches the image);
- decoder pass (stage 3): training-mode encoder + decoder forward + backward on a batch of
  `labelled_batch_size` images;

and the table gives stage 1 + those parts next to the measured step.
Compare with the PyTorch twin in experiments/benchmarks/torch_twin (same network, batch and size) run in
the same session:  /tmp/torch-ref/bin/python experiments/benchmarks/torch_twin/torch_reference.py train --batch 16 --size 320
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def make_batch(rng, batch: int, size: int):
    import numpy as np

    images = rng.random((batch, size, size, 1), dtype=np.float32)
    masks = (rng.random((batch, size, size)) > 0.9).astype(np.float32)
    return {"image": images, "label": (np.arange(batch) % 2).astype(np.int32), "mask": masks,
            "has_mask": np.ones(batch, bool), "valid": np.ones(batch, bool)}


def bench_stage(stage: int, batch: int, size: int, args) -> dict:
    import jax
    import numpy as np

    from pcam_jax.configs import get_config
    from pcam_jax.models import create_model
    from pcam_jax.training import state as state_lib
    from pcam_jax.training import steps

    config = get_config("base")
    config.model.dtype = args.dtype
    config.data.image_size = size
    config.data.batch_size = batch
    model = create_model(config.model)
    train_state = state_lib.create_train_state(config, model, jax.random.key(0))
    step = jax.jit(steps.make_train_step(stage, config, model), donate_argnums=0)
    rng = np.random.default_rng(0)
    batches = [jax.device_put(make_batch(rng, batch, size)) for _ in range(2)]
    labelled = jax.device_put(make_batch(rng, config.data.labelled_batch_size, size)) if stage == 3 else None

    holder = {"state": train_state, "i": 0}

    def run_one():
        holder["state"], metrics = step(holder["state"], batches[holder["i"] % 2], labelled)
        holder["i"] += 1
        return metrics["loss"]

    median, low, high = common.timeit(run_one, warmup=args.warmup, rounds=args.steps)
    return {"bench": "train_step", "stage": stage, "batch": batch, "size": size, "dtype": args.dtype,
            "median_s": median, "min_s": low, "max_s": high, "images_per_s": batch / median}


def bench_parts(batch: int, size: int, args) -> dict:
    """Seconds of the passes stages 2 and 3 add to stage 1, each timed alone."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pcam_jax.configs import get_config
    from pcam_jax.models import PCAMNet, create_model, init_variables

    config = get_config("base")
    config.model.dtype = args.dtype
    model = create_model(config.model)
    variables = init_variables(model, jax.random.key(0), size)
    rng = np.random.default_rng(0)
    images = jax.device_put(make_batch(rng, batch, size)["image"])
    labelled = jax.device_put(make_batch(rng, config.data.labelled_batch_size, size))

    @jax.jit
    def masked_pass(params, images):
        def loss(params, images):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, train=False)
            return jnp.sum(logits)
        return jax.grad(loss, argnums=(0, 1))(params, images)

    @jax.jit
    def decoder_pass(params, labelled):
        def loss(params):
            lesion_map, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, labelled["image"],
                                        train=True, method=PCAMNet.segment, mutable=["batch_stats"])
            return jnp.mean((lesion_map - labelled["mask"]) ** 2)
        return jax.grad(loss)(params)

    params = variables["params"]
    masked, _, _ = common.timeit(lambda: masked_pass(params, images), warmup=args.warmup, rounds=args.steps)
    decoder, _, _ = common.timeit(lambda: decoder_pass(params, labelled), warmup=args.warmup, rounds=args.steps)
    return {"masked_pass_s": masked, "decoder_pass_s": decoder}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x320,32x128", help="comma-separated BATCHxSIZE")
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-parts", dest="parts", action="store_false",
                        help="skip timing the stage-2/3 extra passes alone")
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header())
    stages = [int(s) for s in args.stages.split(",")]
    rows, parts = [], {}
    for shape in args.shapes.split(","):
        batch, size = (int(v) for v in shape.lower().split("x"))
        for stage in stages:
            row = bench_stage(stage, batch, size, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.parts and 1 in stages and (2 in stages or 3 in stages):
            parts[batch, size] = bench_parts(batch, size, args)
            print(json.dumps({"bench": "train_step_parts", "batch": batch, "size": size, **parts[batch, size]}), flush=True)
    print()
    print(f"{'stage':>5} {'batch':>5} {'size':>5} {'median s':>9} {'img/s':>8} {'vs stage 1':>10} "
          f"{'stage 1 + parts':>15} {'measured / parts':>16}")
    for row in rows:
        base = next((r for r in rows if r["stage"] == 1 and r["batch"] == row["batch"] and r["size"] == row["size"]), None)
        ratio = f"{row['median_s'] / base['median_s']:.2f}x" if base else "-"
        part = parts.get((row["batch"], row["size"]))
        expected = measured = "-"
        if part and base and row["stage"] > 1:
            extra = part["masked_pass_s"] + (part["decoder_pass_s"] if row["stage"] == 3 else 0.0)
            expected = f"{base['median_s'] + extra:.4f}"
            measured = f"{row['median_s'] / (base['median_s'] + extra):.2f}x"
        print(f"{row['stage']:>5} {row['batch']:>5} {row['size']:>5} {row['median_s']:>9.4f} "
              f"{row['images_per_s']:>8.1f} {ratio:>10} {expected:>15} {measured:>16}")


if __name__ == "__main__":
    main()
