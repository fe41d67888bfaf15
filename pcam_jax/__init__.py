"""pcam_jax: weakly-supervised bone X-ray classification that shows where the lesion is.

Stage 1 trains a ResNet classifier whose positive class activation map marks the lesion;
stage 2 makes that map learnable (a masked second pass, after GAIN); stage 3 guides it
with a few clinician lesion labels through an FCN decoder sharing the encoder.
See README.md and docs/METHOD.md.
"""

__version__ = "0.1.0"


def load(workdir, stage: int = 3, which: str | int = "best"):
    """Load a trained run for analysis: see `pcam_jax.run.analysis.load`."""
    from pcam_jax.run.analysis import load as _load

    return _load(workdir, stage=stage, which=which)
