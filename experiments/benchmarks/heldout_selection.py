"""What ranking stage 4 by held-out decoder PxAP costs per epoch (`pcam_jax.training.selection`).

    # the tiny test config (synthetic, 32 px, 4 held-out masks)
    python experiments/benchmarks/heldout_selection.py --config tiny --data_dir /tmp/tiny-data
    # FracAtlas (256 px; its model_selection fractures), prepared with `pcam-jax prepare fracatlas`
    python experiments/benchmarks/heldout_selection.py --config fracatlas --data_dir DATA

Measures, with the loop's own functions on a fresh stage-4 state (the cost does not depend on the
weights): the one-time read of the held-out images (`selection.heldout_batches`, once per stage),
the per-epoch ranking (`selection.heldout_pxap`: the jitted decoder pass plus PxAP on the host),
and, to put it in proportion, a stage-4 train step times the steps of one epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=3, help="stage-4 steps timed for the epoch estimate")
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header())
    import jax
    import numpy as np

    from pcam_jax import configs, models
    from pcam_jax.data.source import PipelineData
    from pcam_jax.training import mesh as mesh_lib, selection, stages, state as state_lib, steps

    config = configs.get_config(args.config)
    config.data.data_dir = args.data_dir
    data = PipelineData(config)
    mesh = mesh_lib.make_mesh()
    model = models.create_model(config.model)
    state = state_lib.initial_state(4, config, model, jax.random.key(0), "/nonexistent", mesh)

    started = time.perf_counter()
    heldout, images = selection.heldout_batches(data, config)
    read_s = time.perf_counter() - started
    if heldout is None:
        raise SystemExit(f"{args.config}: no held-out lesion masks in {args.data_dir}")
    decoder_map_step = jax.jit(steps.make_decoder_map_step(model))
    started = time.perf_counter()
    first = selection.heldout_pxap(decoder_map_step, state, heldout, mesh)
    first_s = time.perf_counter() - started   # with the compilation
    median_s, min_s, max_s = common.timeit(lambda: selection.heldout_pxap(decoder_map_step, state, heldout, mesh),
                                           warmup=0, rounds=args.rounds)
    # the host part alone: PxAP of maps already on the host
    from pcam_jax.data import scorable_rows
    from pcam_jax.metrics import localisation

    host = [dict(b, map=np.asarray(decoder_map_step(state, device))) for device, b in
            mesh_lib.prefetch_to_device(heldout, mesh)]
    rows = {k: np.concatenate([b[k] for b in host]) for k in ("map", "mask", "has_mask", "valid")}
    keep = scorable_rows(rows)
    pxap_s = common.timeit(lambda: localisation.pxap(rows["map"][keep], rows["mask"][keep]), warmup=0,
                           rounds=args.rounds)[0]

    spec = stages.get(4)
    train_step = mesh_lib.jit_train_step(steps.make_train_step(spec, config, model, 1000), mesh, state)
    batches = mesh_lib.prefetch_to_device(data.train_batches(seed=0, start_step=0), mesh)
    labelled = mesh_lib.prefetch_to_device(data.labelled_batches(seed=0, start_step=0), mesh)
    state, metrics = train_step(state, next(batches)[0], next(labelled)[0])   # compile
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(args.train_steps):
        state, metrics = train_step(state, next(batches)[0], next(labelled)[0])
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - started) / args.train_steps
    epoch_s = step_s * data.steps_per_epoch

    rows_out = [
        ("held-out images ranked", images, ""),
        ("image size", int(config.data.image_size), "px"),
        ("read once per stage", f"{read_s:.2f}", "s"),
        ("first ranking (with compilation)", f"{first_s:.2f}", "s"),
        ("ranking per epoch, median (min-max)", f"{median_s:.3f} ({min_s:.3f}-{max_s:.3f})", "s"),
        ("  of which PxAP on the host", f"{pxap_s:.3f}", "s"),
        ("stage-4 train step", f"{step_s:.3f}", "s"),
        ("stage-4 epoch (steps x step)", f"{data.steps_per_epoch} x = {epoch_s:.1f}", "s"),
        ("ranking / epoch", f"{100 * median_s / epoch_s:.1f}", "%"),
        ("held-out PxAP of the fresh state", f"{first:.4f}", ""),
    ]
    print(common.json_line({"config": args.config, "images": images, "read_s": read_s, "first_s": first_s,
                       "ranking_s": median_s, "pxap_host_s": pxap_s, "train_step_s": step_s,
                       "steps_per_epoch": data.steps_per_epoch, "epoch_s": epoch_s}))
    for name, value, unit in rows_out:
        print(f"{name:40s} {value} {unit}")


if __name__ == "__main__":
    main()
