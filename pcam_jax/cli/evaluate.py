"""``pcam-jax evaluate --workdir DIR [--split test] [--which best] [--out DIR] [--lesion_labels F] [--external FOLDER]``:
score every map method of every trained stage from the checkpoints alone (`pcam_jax.evaluation.evaluate`);
``--external`` scores a labelled folder (labels.csv, masks/) instead of the run's test split
(`pcam_jax.evaluation.real_data`)."""

from __future__ import annotations

from pcam_jax.cli import flags


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if not flags.WORKDIR.value:
        raise ValueError("--workdir is required (a run directory from `pcam-jax train`)")
    from pcam_jax.evaluation.evaluate import evaluate_workdir

    evaluate_workdir(flags.WORKDIR.value, split=flags.SPLIT.value, data_dir=flags.DATA_DIR.value,
                     out_dir=flags.OUT.value, which=flags.which_checkpoint(flags.WHICH.value),
                     lesion_labels=flags.LESION_LABELS.value, extra_methods=tuple(flags.EXTRA_METHODS.value),
                     external=flags.EXTERNAL.value)
