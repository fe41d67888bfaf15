"""``pcam-jax demo [--workdir work/demo] [--config synthetic]``: all three stages on synthetic
radiographs, then evaluation, on a CPU (the phases are `pcam_jax.cli.demo_phases`)."""

from __future__ import annotations

from pcam_jax.cli import flags


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    from pcam_jax.cli import demo_phases as demo

    demo.run_demo(flags.WORKDIR.value or demo.DEFAULT_WORKDIR, flags.CONFIG.value)
