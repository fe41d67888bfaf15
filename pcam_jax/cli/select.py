"""``pcam-jax select --workdir RUN [--n 100] [--method uncertainty] [--out RUN/selected.csv]``: rank the
unlabelled abnormal train images for a clinician to label (`pcam_jax.labelling.selection`)."""

from __future__ import annotations

import pathlib

from pcam_jax.cli import flags

DEFAULT_ACQUISITION = "uncertainty"


def main(argv):
    from absl import flags as absl_flags

    from pcam_jax.labelling import acquisition, selection

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if not flags.WORKDIR.value:
        raise ValueError("--workdir is required (a run directory from `pcam-jax train`)")
    method = flags.METHOD.value if absl_flags.FLAGS["method"].present else DEFAULT_ACQUISITION
    if method not in acquisition.ACQUISITIONS:
        raise ValueError(f"unknown --method {method!r}; choose from {', '.join(acquisition.ACQUISITIONS)}")
    if flags.NUM_IMAGES.value < 1:
        raise ValueError(f"--n must be at least 1, got {flags.NUM_IMAGES.value}")
    run = load_run()
    out = pathlib.Path(flags.OUT.value or pathlib.Path(flags.WORKDIR.value) / "selected.csv")
    excluded = selection.excluded_paths(run.config, flags.EXCLUDE.value)
    records = selection.candidate_records(run.config, excluded, flags.DATA_DIR.value)
    methods = tuple(m.strip() for m in flags.ACQUISITION_MAPS.value.split(",")) if flags.ACQUISITION_MAPS.value else None
    paths, scores = selection.score_candidates(run, records, method, methods=methods, seed=flags.SEED.value)
    if not paths:
        raise ValueError(f"no unlabelled abnormal train image is left to select ({len(excluded)} excluded)")
    rows = selection.rank(paths, scores, flags.NUM_IMAGES.value)
    selection.write_list(rows, out)
    print(f"{len(rows)} of {len(paths)} candidate images listed in {out} by {method} (stage {run.stage}, "
          f"step {run.step}; {len(excluded)} already labelled left out). Label them with: "
          f"pcam-jax label --list {out} --out labels.json --workdir {flags.WORKDIR.value}")


def load_run():
    """The run of --workdir at --stage (default the last trained) and --which."""
    from pcam_jax.run.analysis import load
    from pcam_jax.training.checkpointing import trained_stages

    stages = trained_stages(flags.WORKDIR.value)
    if not stages:
        raise FileNotFoundError(f"no checkpoints under {flags.WORKDIR.value}/checkpoints: train first "
                                "(`pcam-jax train --stages 1,2`) or point --workdir at a run")
    return load(flags.WORKDIR.value, stage=flags.STAGE.value or stages[-1],
                which=flags.which_checkpoint(flags.WHICH.value))
