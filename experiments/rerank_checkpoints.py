"""Which of a finished run's stage-3 checkpoints ``stage3.select_by="localisation"`` would keep as
"best": the loop's own criterion (`selection.heldout_batches`, `selection.heldout_pxap` over
`steps.make_decoder_map_step`) computed on every kept checkpoint of a run trained with the default
(ranked on model_selection AUROC), beside the AUROC each was ranked by. Reads no test image
(FracAtlas's held-out masks are model_selection's fractures: `pcam_jax.data.HELDOUT_MASK_SPLIT`).

    python experiments/rerank_checkpoints.py RUN [--stage 3] [--data_dir DATA]

Then score the chosen step once: ``python experiments/fracatlas_evaluate.py RUN --which STEP``.
"""

import argparse

import jax

from pcam_jax.data import HELDOUT_MASK_SPLIT
from pcam_jax.data.source import PipelineData
from pcam_jax.models import create_model
from pcam_jax.training import checkpointing, mesh as mesh_lib, selection, steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    kept = checkpointing.StageCheckpoints(args.workdir, args.stage, read_only=True)
    saved = sorted(kept.manager.all_steps())
    kept.close()
    if not saved:
        raise SystemExit(f"{args.workdir}: stage {args.stage} has no checkpoint to rank (train it first)")
    mesh = mesh_lib.make_mesh()
    scores, decoder_map_step = {}, None
    for step in saved:
        config, variables, meta = checkpointing.restore_for_eval(args.workdir, args.stage, step)
        if decoder_map_step is None:   # the held-out batches and the jitted map, once: every checkpoint shares the config
            batches, images = selection.heldout_batches(PipelineData(config, args.data_dir), config)
            if batches is None:
                raise SystemExit(f"{args.workdir}: the dataset {config.data.dataset!r} has no held-out lesion "
                                 "masks to rank on")
            decoder_map_step = jax.jit(steps.make_decoder_map_step(create_model(config.model)))
            print(f"stage {args.stage} of {args.workdir}: heldout_pxap on {images} "
                  f"{HELDOUT_MASK_SPLIT[config.data.dataset]} lesion images")
            print("| step | model_selection auroc | heldout_pxap |")
            print("|---|---|---|")
        scores[step] = selection.heldout_pxap(decoder_map_step, mesh_lib.replicate(dict(variables), mesh), batches, mesh)
        print(f"| {step} | {meta.get('eval', {}).get('auroc', float('nan')):.4f} | {scores[step]:.4f} |")
    print(f"by localisation: step {max(scores, key=scores.get)}; "
          f"as trained ({selection.describe(selection.recorded(meta))}): step "
          f"{checkpointing.restore_for_eval(args.workdir, args.stage, 'best')[2]['step']}")


if __name__ == "__main__":
    main()
