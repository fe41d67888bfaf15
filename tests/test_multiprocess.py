"""Two real processes (jax.distributed on 127.0.0.1, gloo CPU collectives) train together.

Each rank is `tests/multiprocess_worker.py` with 2 fake CPU devices, started by
`pcam_jax.training.local_launch.launch` with a free port and hard timeouts on every wait.
The reference is the same training in this process on a mesh of 4 devices: the same global
batches, so the same parameters. One 2-process job is killed (rank 1, SIGKILL, in stage 3
right after step 4, whose save waited for step 2's to be complete); the survivor must exit
on its own within the heartbeat timeout, and the same job launched again resumes from a
checkpoint both wrote.

Time: the two jobs run one after the other in a launcher thread (it only starts, polls and
kills subprocesses) while this process trains the reference. ``make test`` runs ``pytest -n 2
--dist loadfile``: with xdist's default ``load``, this module's tests could be split over both
workers, and each would run the module fixtures, i.e. both jobs and the reference, again.
"""

import concurrent.futures
import json
import sys

import jax
import numpy as np
import pytest

from pcam_jax import models
from pcam_jax.training import checkpointing, local_launch, loop, mesh as mesh_lib, reporting, state as state_lib
from tests import multiprocess_worker as worker

pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py

HEARTBEAT_SECONDS = 5      # the killed job: a peer silent this long is dead; the survivor exits soon after
# The relaunched job has no death to notice: a long heartbeat, so that a live peer starved of CPU on
# a loaded machine (2 shared cores, a compile in each process) is never declared dead. What is
# checked of it (it resumes and ends at the one-process parameters) does not depend on the timeout.
RESUMED_HEARTBEAT_SECONDS = 120
JOB_TIMEOUT = 240          # one job, seconds; the machine is shared, the compiles are not free
SURVIVOR_BOUND = HEARTBEAT_SECONDS + 30


def run_job(workdir, logs, *, die: str | None = None):
    """(results, process 0's JSON or None) of one 2-process job on ``workdir``."""
    result_json = workdir.parent / f"{workdir.name}-result.json"
    result_json.unlink(missing_ok=True)
    results = local_launch.launch(
        [sys.executable, worker.__file__, str(workdir), str(result_json)], 2, logs, devices_per_process=2,
        heartbeat_seconds=HEARTBEAT_SECONDS if die else RESUMED_HEARTBEAT_SECONDS, timeout=JOB_TIMEOUT,
        grace=SURVIVOR_BOUND, extra_env={worker.DIE_ENV: die} if die else {})
    return results, (json.loads(result_json.read_text()) if result_json.exists() else None)


def killed_then_resumed_jobs(root):
    """Job 1: rank 1 dies in stage 3 after step 4; job 2: the same launch again."""
    workdir = root / "run"
    killed, _ = run_job(workdir, root / "logs-killed", die="1:3:4")
    resumed, result = run_job(workdir, root / "logs-resumed")
    return workdir, killed, resumed, result


def one_process_reference(workdir):
    """The one-process run (4 devices of this process) and its joint evaluation."""
    config = worker.tiny_config()
    mesh = mesh_lib.make_mesh(jax.devices()[:4])
    data = worker.ProcessSlice(config, 0, 1)
    loop.train_and_evaluate(config, workdir, (1, 2, 3), data=data, mesh=mesh,
                            reporter=reporting.Reporter(workdir, enabled=False))
    return workdir, worker.joint_evaluation(config, workdir, data, mesh)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(reference, killed_then_resumed): the 2-process jobs and the 1-process run at the same time.

    Every wait is bounded: each job by `local_launch.launch`'s timeout, the thread by both.
    """
    root = tmp_path_factory.mktemp("two_processes")
    reference_dir = tmp_path_factory.mktemp("one_process")
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="launcher") as pool:
        jobs = pool.submit(killed_then_resumed_jobs, root)
        reference = one_process_reference(reference_dir)
        return reference, jobs.result(timeout=2 * (JOB_TIMEOUT + 60))


@pytest.fixture(scope="module")
def reference(runs):
    return runs[0]


@pytest.fixture(scope="module")
def killed_then_resumed(runs):
    return runs[1]


def test_killed_process_makes_the_other_exit_with_a_message(killed_then_resumed):
    _, killed, _, _ = killed_then_resumed
    survivor, dead = killed
    assert dead.status == local_launch.KILLED_STATUS, local_launch.summary(killed)   # SIGKILL by itself
    assert "killing myself after stage 3 step 4" in dead.log.read_text()
    # The survivor ended on its own (not killed by the launcher), with an error, in bounded time.
    assert survivor.status not in (0, local_launch.KILLED_STATUS), local_launch.summary(killed)
    assert survivor.seconds - dead.seconds < SURVIVOR_BOUND
    log = survivor.log.read_text()
    assert ("another task died" in log                      # the coordination service's heartbeat check
            or "Gloo" in log and "failed" in log), log[-3000:]   # or the collective that lost its peer


def test_relaunched_job_resumes_from_the_joint_checkpoint(killed_then_resumed):
    workdir, _, resumed, result = killed_then_resumed
    assert [r.status for r in resumed] == [0, 0], local_launch.summary(resumed)
    assert result["process_count"] == 2 and result["device_count"] == 4
    assert result["skipped"] == {"1": True, "2": True, "3": False}
    log = resumed[0].log.read_text()
    assert "stage 3: resuming from step 2" in log or "stage 3: resuming from step 4" in log, log[-3000:]


def restore_in_this_process(workdir, stage):
    """(variables, meta) of a stage's latest checkpoint, restored by this one process (8 devices)."""
    config = worker.tiny_config()
    model = models.create_model(config.model)
    checkpoints = checkpointing.StageCheckpoints.from_config(workdir, stage, config)
    try:
        state, meta = checkpoints.restore(state_lib.abstract_state(config, model, mesh_lib.make_mesh()))
    finally:
        checkpoints.close()
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, meta


def test_two_processes_end_at_the_one_process_parameters(reference, killed_then_resumed):
    reference_dir, _ = reference
    workdir, _, resumed, _ = killed_then_resumed
    assert [r.status for r in resumed] == [0, 0], local_launch.summary(resumed)
    for stage in (1, 2, 3):
        # a one-process restore (8 devices) of the checkpoint the two processes (4 devices) wrote
        expected, expected_meta = restore_in_this_process(reference_dir, stage)
        got, got_meta = restore_in_this_process(workdir, stage)
        assert got_meta["step"] == expected_meta["step"] == {1: 4, 2: 4, 3: 8}[stage]
        assert got_meta["confidence"] == pytest.approx(expected_meta["confidence"], rel=1e-5)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # training moved the parameters: the comparison is not vacuous
    stage1, _ = restore_in_this_process(reference_dir, 1)
    stage3, _ = restore_in_this_process(reference_dir, 3)
    assert not np.allclose(models.head_kernel(stage1["params"]), models.head_kernel(stage3["params"]))


def test_restore_for_eval_reads_a_two_process_checkpoint(killed_then_resumed):
    workdir, _, _, _ = killed_then_resumed
    checkpointing.restore_for_eval(workdir, 3, "latest")


def test_joint_evaluation_counts_every_example_once(reference, killed_then_resumed):
    _, expected = reference
    _, _, _, result = killed_then_resumed
    assert result is not None, "the resumed job wrote no result"
    assert sorted(result["eval_ids"]) == list(range(worker.NUM_EVAL))      # each once, padding dropped
    assert expected["eval_ids"] == list(range(worker.NUM_EVAL))
    for key in ("accuracy", "auroc", "sensitivity", "specificity"):
        assert result["metrics"][key] == pytest.approx(expected["metrics"][key], abs=1e-6)
