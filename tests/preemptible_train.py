"""``pcam-jax train`` in a subprocess, fed by the tests' in-memory data, slowed to a known pace.

    python tests/preemptible_train.py SECONDS_PER_STEP pcam-jax-train-flags...

The real command path (flag parsing, signal handlers, error-to-status mapping) runs; only
`loop.PipelineData` is replaced by `test_loop.FakeData`, whose train batches each take
``SECONDS_PER_STEP``, so that a test's signal lands mid-stage, and TensorBoard is off. Compiled like the in-process
tests (no project XLA flags, most optimisations off), so its results equal theirs bit for bit.
"""

import os
import sys
import time

os.environ["PCAM_JAX_NO_XLA_FLAGS"] = "1"

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

from pcam_jax import cli  # noqa: E402
from pcam_jax.training import loop, reporting  # noqa: E402
from tests.test_loop import FakeData  # noqa: E402


class SlowData(FakeData):
    def __init__(self, config, data_dir=None):
        super().__init__(config)

    def train_batches(self, *, seed, start_step):
        for batch in super().train_batches(seed=seed, start_step=start_step):
            time.sleep(PACE)
            yield batch


class NoTensorBoard(reporting.Reporter):
    """TensorBoard would import TensorFlow: seconds of start-up, and no part of what is tested."""

    def __init__(self, workdir, **kwargs):
        super().__init__(workdir, tensorboard=False, **kwargs)


if __name__ == "__main__":
    PACE = float(sys.argv[1])
    loop.PipelineData = SlowData
    reporting.Reporter = NoTensorBoard
    cli.main(["pcam-jax", "train", *sys.argv[2:]])
