"""Resume is exact in stages 2 and 3 with the default confidence (EMA of training accuracy), and
``stage2.init_from="stage1"`` starts stage 2 from stage 1's best checkpoint through the loop.

The README promises a run "resumes where it stopped"; stage 1's resume is checked bit for bit in
tests/test_reliability.py. Here a three-stage run with ``config.stage2.confidence = "ema"`` (the
default: the EMA and its bias correction live in the train state) is killed mid-stage 2 and
mid-stage 3, resumed, and must end with the uninterrupted run's parameters, bit for bit.
"""

import json

import jax
import numpy as np
import pytest

from pcam_jax import configs, models
from pcam_jax.training import checkpointing, loop, mesh as mesh_lib, state as state_lib, steps
from tests.test_loop import FakeData, quiet_reporter

pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py


def ema_config(**stage2):
    config = configs.get_config("tiny")
    assert config.stage2.confidence == "ema"   # the default is what is tested
    config.stage2.num_epochs = 2
    config.stage3.num_epochs = 2
    config.train.checkpoint_every_steps = 4
    config.train.best_metric = "accuracy"
    config.stage2.update(stage2)
    return config


class Killed(Exception):
    pass


def _latest(workdir, stage):
    _, variables, meta = checkpointing.restore_for_eval(workdir, stage, "latest")
    return variables, meta


def _records(workdir):
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
            for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    config = ema_config()
    workdir = tmp_path_factory.mktemp("ema_reference")
    loop.train_and_evaluate(config, workdir, (1, 2, 3), data=FakeData(config), reporter=quiet_reporter(workdir))
    return config, workdir


@pytest.mark.parametrize("kill_stage, kill_step", [(2, 11), (3, 9)])
def test_resume_with_ema_confidence_is_bit_identical(reference, tmp_path, kill_stage, kill_step):
    config, ref = reference

    def kill(stage, step):   # mid-epoch 2 of the stage (6 steps an epoch); its last checkpoint is step 8
        if (stage, step) == (kill_stage, kill_step):
            raise Killed

    with pytest.raises(Killed):
        loop.train_and_evaluate(config, tmp_path, (1, 2, 3), data=FakeData(config), on_step=kill,
                                reporter=quiet_reporter(tmp_path))
    _, meta = _latest(tmp_path, kill_stage)
    assert meta["step"] == 8 < kill_step
    # the EMA is part of what was saved, and has moved off its start (it is not vacuous)
    assert 0.0 < meta["confidence"]["accuracy_ema"] <= 1.0
    loop.train_and_evaluate(config, tmp_path, (1, 2, 3), data=FakeData(config), reporter=quiet_reporter(tmp_path))

    for stage in (1, 2, 3):
        got, got_meta = _latest(tmp_path, stage)
        want, want_meta = _latest(ref, stage)
        assert got_meta["step"] == want_meta["step"]
        assert got_meta["confidence"] == want_meta["confidence"], stage   # exact, not approx
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _records(tmp_path) == _records(ref)   # every step logged once, the same losses and lambdas


def _replay_stage2(config, start_variables, steps_to_run):
    """Stage 2 trained by hand (one device, no loop): the same step function, batches and seed."""
    model = models.create_model(config.model)
    fresh = jax.jit(lambda key: models.init_variables(model, key, int(config.data.image_size)))(
        jax.random.fold_in(jax.random.key(int(config.seed)), 2))
    variables = start_variables if start_variables is not None else fresh
    variables = state_lib.carry_over(variables, fresh)
    state = jax.jit(lambda v: state_lib.create_train_state(config, model, jax.random.key(0), init_params=v))(variables)
    step = jax.jit(steps.make_train_step(2, config, model))
    batches = FakeData(config).train_batches(seed=1000 * int(config.seed) + 2, start_step=0)
    for _ in range(steps_to_run):
        batch = next(batches)
        state, _ = step(state, {k: batch[k] for k in ("image", "label", "mask", "has_mask", "valid")})
    return state


def test_stage2_init_from_stage1_starts_from_stage1_best_through_the_loop(tmp_path):
    config = ema_config(init_from="stage1")
    config.stage1.num_epochs = 3    # several epoch ends to choose the best from
    config.train.update(best_metric="auroc", checkpoint_every_steps=0, keep_checkpoints=10)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])   # one device: the replay below is the same program
    loop.train_and_evaluate(config, tmp_path, (1, 2), data=FakeData(config), mesh=mesh,
                            reporter=quiet_reporter(tmp_path))
    _, stage1_best, best_meta = checkpointing.restore_for_eval(tmp_path, 1, "best")
    evals = [r["auroc"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["stage"] == 1 and r.get("split") == "model_selection"]
    assert len(evals) == 3 and best_meta["eval"]["auroc"] == max(evals)
    stage2, meta = _latest(tmp_path, 2)
    total = meta["step"]

    from_stage1 = _replay_stage2(config, stage1_best, total)
    from_scratch = _replay_stage2(config, None, total)
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    # The loop's stage 2 is the hand replay from stage 1's best (float rounding at most) ...
    assert diff(stage2["params"], from_stage1["params"]) < 1e-5
    assert diff(stage2["batch_stats"], from_stage1["batch_stats"]) < 1e-5
    # ... and far from a stage 2 trained from scratch: the comparison can tell them apart.
    assert diff(stage2["params"], from_scratch["params"]) > 1e-2
