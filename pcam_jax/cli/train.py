"""``pcam-jax train --config CONFIG --workdir DIR [--stages 1,2,3] [--data_dir DIR]``.

Running the same command again resumes where the run stopped (finished stages are skipped).
SIGTERM or Ctrl-C stops it after the step in flight with a checkpoint of that step (exit 3);
a second one stops it at once.
The TFDS data directory is resolved once (`pcam_jax.data.resolve_data_dir`) and stored in
the run's config, so `pcam-jax evaluate` later reads the same data. The synthetic dataset is
built there on first use. The work is `pcam_jax.training.loop.train_and_evaluate`.
"""

from __future__ import annotations

from pcam_jax.cli import flags


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if flags.CONFIG.value is None:
        raise ValueError("--config is required (a preset: synthetic, mura, tiny, or a file)")
    if not flags.WORKDIR.value:
        raise ValueError("--workdir is required (the run directory)")
    from pcam_jax.data import resolve_data_dir
    from pcam_jax.training import guards, loop

    config = flags.CONFIG.value
    with config.unlocked():
        config.data.data_dir = resolve_data_dir(config, flags.DATA_DIR.value)
    # SIGTERM (preemption) / Ctrl-C: finish the step, save, exit 3 (`pcam_jax.errors`).
    with guards.StopOnSignals() as stop:
        loop.train_and_evaluate(config, flags.WORKDIR.value, flags.STAGES.value, should_stop=stop)
