"""``pcam-jax evaluate --workdir DIR [--split test]``: score every map method from checkpoints alone."""

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/ (from `pcam-jax train`).", allow_override=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to score; default test (synthetic) or valid (MURA).", allow_override=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the one stored in the run's config.", allow_override=True)
_WHICH = flags.DEFINE_string("which", "best", "Checkpoint per stage: best, latest or a step number.", allow_override=True)
_OUT = flags.DEFINE_string("out", None, "Output directory; default <workdir>/eval.", allow_override=True)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise SystemExit("pcam-jax evaluate: --workdir is required")
    from pcam_jax.evaluation.evaluate import evaluate_workdir

    which = int(_WHICH.value) if _WHICH.value.isdigit() else _WHICH.value
    evaluate_workdir(_WORKDIR.value, split=_SPLIT.value, data_dir=_DATA_DIR.value, out_dir=_OUT.value,
                     which=which)
