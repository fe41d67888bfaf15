"""``pcam-jax train`` in a subprocess, fed by the tests' in-memory data, paced by the test.

    python tests/preemptible_train.py GATE_FILE pcam-jax-train-flags...

The real command path (flag parsing, signal handlers, error-to-status mapping) runs; only
`loop.PipelineData` is replaced by `test_loop.FakeData` and TensorBoard is off. The test paces
the run through GATE_FILE: train batch ``i`` (0-based) is handed out only once the file holds a
number greater than ``i`` (no file: no gate); while it waits for batch ``i``, GATE_FILE.waiting
holds ``i``. The loop asks for the batch of step ``i + 1`` only after step ``i``'s stop check, so
a test signals the run between two steps of its choosing however slow or loaded the machine is
(a wall-clock pace raced the machine's load). Compiled like the in-process tests (no project XLA flags, most optimisations off), so its
results equal theirs bit for bit.
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


GATE_TIMEOUT = 600   # seconds a batch waits for the gate before the run fails (a test that forgot it)


def gate_value(path: str) -> int | None:
    """The number in the gate file, None without one (a half-written file reads as 0)."""
    try:
        text = open(path).read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else 0


class GatedData(FakeData):
    def __init__(self, config, data_dir=None):
        super().__init__(config)

    def train_batches(self, *, seed, start_step):
        for position, batch in enumerate(super().train_batches(seed=seed, start_step=start_step), start_step):
            deadline, told = time.monotonic() + GATE_TIMEOUT, False
            while (gate := gate_value(GATE)) is not None and gate <= position:
                if not told:
                    with open(GATE + ".waiting.partial", "w") as f:
                        f.write(str(position))
                    os.replace(GATE + ".waiting.partial", GATE + ".waiting")
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"train batch {position} waited {GATE_TIMEOUT} s for the gate {GATE}")
                time.sleep(0.02)
            yield batch


class NoTensorBoard(reporting.Reporter):
    """TensorBoard would import TensorFlow: seconds of start-up, and no part of what is tested."""

    def __init__(self, workdir, **kwargs):
        super().__init__(workdir, tensorboard=False, **kwargs)


if __name__ == "__main__":
    GATE = sys.argv[1]
    loop.PipelineData = GatedData
    reporting.Reporter = NoTensorBoard
    cli.main(["pcam-jax", "train", *sys.argv[2:]])
