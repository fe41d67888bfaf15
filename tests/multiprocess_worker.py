"""One rank of the multi-process tests (tests/test_multiprocess.py); not a test module.

    python tests/multiprocess_worker.py WORKDIR RESULT_JSON

started by `pcam_jax.training.local_launch.launch` (which sets the jax.distributed
variables). Trains the tiny network through stages 1-3 on `ProcessSlice` data: every
process yields its rows of the same global batches a one-process run sees, so both must end
at the same parameters. Then a joint evaluation of the latest stage-3 checkpoint, restored
by all processes together, writes RESULT_JSON (process 0): the model-selection metrics and
the ids of the examples it counted.

``PCAM_JAX_TEST_DIE=RANK:STAGE:STEP``: that rank kills itself (SIGKILL) right after
dispatching that step.
"""

import json
import os
import pathlib
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pcam_jax.training import mesh as mesh_lib  # noqa: E402

DIE_ENV = "PCAM_JAX_TEST_DIE"
NUM_TRAIN, NUM_EVAL = 32, 13   # 4 steps per epoch; the last eval batch is partly padding
ID_SCALE = 1.0 / 1024          # an eval example's id is stored in its pixel (0, 0): exact in float32


def tiny_config():
    from pcam_jax import configs

    config = configs.get_config("tiny")
    config.stage2.confidence = "validation"   # the eval accuracy is part of the state too
    config.stage3.num_epochs = 2
    config.train.checkpoint_every_steps = 2
    config.train.best_metric = "accuracy"
    config.train.image_summary_every_steps = 0
    return config


class ProcessSlice:
    """`pcam_jax.data.source.DataSource`: this process's contiguous rows of `tests.test_loop.FakeData`'s global batches.

    The loop's global batch is the concatenation of every process's rows (`mesh.shard_batch`),
    so it is exactly the one-process batch. Eval images carry their example id in pixel (0, 0).
    """

    def __init__(self, config, rank: int, count: int):
        from tests.test_loop import FakeData

        self.full = FakeData(config, num_train=NUM_TRAIN, num_eval=NUM_EVAL)
        self.steps_per_epoch = self.full.steps_per_epoch
        self.rank, self.count = rank, count

    def _mine(self, batch):
        n = len(batch["label"]) // self.count
        return {k: v[self.rank * n:(self.rank + 1) * n] for k, v in batch.items()}

    def train_batches(self, *, seed, start_step):
        return map(self._mine, self.full.train_batches(seed=seed, start_step=start_step))

    def labelled_batches(self, *, seed, start_step):
        return map(self._mine, self.full.labelled_batches(seed=seed, start_step=start_step))

    def eval_batches(self):
        for start, batch in zip(range(0, NUM_EVAL, self.full.eval_batch_size), self.full.eval_batches()):
            ids = start + np.arange(len(batch["label"]))
            batch["image"][:, 0, 0, 0] = (ids + 1) * ID_SCALE
            yield self._mine(batch)


def die_after(spec: str):
    rank, stage, step = (int(x) for x in spec.split(":"))

    def on_step(done_stage, done_step):
        if jax.process_index() == rank and (done_stage, done_step) == (stage, step):
            print(f"rank {rank}: killing myself after stage {stage} step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


def joint_evaluation(config, workdir, data, mesh) -> dict:
    """Metrics and counted example ids of the latest stage-3 checkpoint, restored by all processes."""
    from jax.experimental import multihost_utils
    from pcam_jax import models
    from pcam_jax.training import checkpointing, selection, state as state_lib, steps

    model = models.create_model(config.model)
    checkpoints = checkpointing.StageCheckpoints.from_config(workdir, 3, config)
    try:
        state, meta = checkpoints.restore(state_lib.abstract_state(config, model, mesh))
    finally:
        checkpoints.close()
    metrics = selection.evaluate(jax.jit(steps.make_eval_step(model)), state, data.eval_batches(), mesh)
    ids = []
    for batch in data.eval_batches():
        device = mesh_lib.shard_batch(batch, mesh)
        pixel = np.asarray(multihost_utils.process_allgather(device["image"][:, 0, 0, 0], tiled=True))
        valid = np.asarray(multihost_utils.process_allgather(device["valid"], tiled=True))
        ids += [int(round(p / ID_SCALE)) - 1 for p in pixel[valid]]
    return {"metrics": metrics, "eval_ids": ids, "step": meta["step"]}


def configure_compilation() -> None:
    """Fast compiles of tiny programs that run a few times, every one kept in the persistent
    cache (rank 0 writes it) for the relaunched job and the next session.

    Not ``jax_share_binary_between_hosts`` (rank 0 compiles, rank 1 waits for the binary): tried
    on CPU with jax 0.10.2, rank 1 timed out waiting for the binary of orbax's first
    ``process_allgather`` while rank 0 had already gone on to run it (their keys apparently
    differ), even with a cache directory of the job's own.
    """
    jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_disable_most_optimizations", True)


def main(workdir: str, result_path: str) -> None:
    started = time.monotonic()
    mesh_lib.maybe_initialize_distributed()
    configure_compilation()
    from pcam_jax.training import loop, reporting

    config = tiny_config()
    mesh = mesh_lib.make_mesh()
    data = ProcessSlice(config, jax.process_index(), jax.process_count())
    reporter = reporting.Reporter(workdir, tensorboard=False, progress_bar=False)
    die = os.environ.get(DIE_ENV)
    summaries = loop.train_and_evaluate(config, workdir, (1, 2, 3), data=data, mesh=mesh, reporter=reporter,
                                        on_step=die_after(die) if die else None)
    reporter.close()
    print(f"rank {jax.process_index()}: stages 1-3 done after {time.monotonic() - started:.1f} s", flush=True)
    result = joint_evaluation(config, workdir, data, mesh)
    print(f"rank {jax.process_index()}: joint evaluation done after {time.monotonic() - started:.1f} s", flush=True)
    result.update(process_count=jax.process_count(), device_count=jax.device_count(),
                  skipped={stage: s["skipped"] for stage, s in summaries.items()})
    if jax.process_index() == 0:
        pathlib.Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
