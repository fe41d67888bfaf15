"""The training loop on a small in-memory data source: resume, NaN stop, config checks, logs.

One uninterrupted three-stage run (module fixture) is the reference the other tests compare
against; the tiny network on 8 fake CPU devices keeps it to seconds.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from pcam_jax import configs, models
from pcam_jax.training import checkpointing, loop, stages, state as state_lib


pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py


class FakeData:
    """Deterministic `pcam_jax.data.source.DataSource`: batch ``i`` of a stream is a function of (seed, i) only.

    Abnormal images carry a bright square (the lesion, also the mask), so the classifier
    can learn something. ``poison_from``: train batches from that position on are NaN.
    """

    def __init__(self, config, num_train=48, num_eval=16, poison_from=None):
        self.size = int(config.data.image_size)
        self.batch_size = int(config.data.batch_size)
        self.eval_batch_size = int(config.data.eval_batch_size)
        self.labelled_batch_size = int(config.data.labelled_batch_size)
        self.steps_per_epoch = num_train // self.batch_size
        self.num_eval = num_eval
        self.poison_from = poison_from

    def _batch(self, rng, n, labels=None):
        s = self.size
        labels = rng.integers(0, 2, n) if labels is None else labels
        images = rng.uniform(0.0, 0.4, (n, s, s, 1)).astype(np.float32)
        masks = np.zeros((n, s, s), np.float32)
        for i in np.flatnonzero(labels):
            y, x = rng.integers(0, s - 8, 2)
            masks[i, y:y + 8, x:x + 8] = 1.0
        images[..., 0] = np.maximum(images[..., 0], 0.9 * masks)
        return {"image": images, "label": labels.astype(np.int32), "mask": masks,
                "has_mask": labels.astype(bool), "valid": np.ones(n, bool),
                "path": np.array([f"img{i}" for i in range(n)], object)}

    def train_batches(self, *, seed, start_step):
        step = start_step
        while True:
            batch = self._batch(np.random.default_rng([seed, 1, step]), self.batch_size)
            if self.poison_from is not None and step >= self.poison_from:
                batch["image"][:] = np.nan
            yield batch
            step += 1

    def labelled_batches(self, *, seed, start_step):
        step = start_step
        while True:
            n = self.labelled_batch_size
            yield self._batch(np.random.default_rng([seed, 2, step]), n, labels=np.ones(n, np.int64))
            step += 1

    def eval_batches(self):
        rng = np.random.default_rng(12345)
        for start in range(0, self.num_eval, self.eval_batch_size):
            batch = self._batch(rng, self.eval_batch_size)
            batch["valid"] = np.arange(start, start + self.eval_batch_size) < self.num_eval
            yield batch


def tiny_config(**train):
    config = configs.get_config("tiny")
    config.stage3.num_epochs = 2
    config.stage2.confidence = "validation"   # the resumed state must carry the eval accuracy too
    config.train.checkpoint_every_steps = 4
    config.train.best_metric = "accuracy"
    config.train.update(train)
    return config


def quiet_reporter(workdir):
    from pcam_jax.training import reporting
    return reporting.Reporter(workdir, enabled=True, progress_bar=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Stages 1-3 uninterrupted: (config, workdir, results)."""
    config = tiny_config()
    workdir = tmp_path_factory.mktemp("run")
    results = loop.train_and_evaluate(config, workdir, (1, 2, 3), data=FakeData(config),
                                      reporter=quiet_reporter(workdir))
    return config, workdir, results


def _params(workdir, stage, which="latest"):
    _, variables, meta = checkpointing.restore_for_eval(workdir, stage, which)
    return variables, meta


def test_resumed_run_equals_uninterrupted_run(finished_run, tmp_path):
    config, workdir, results = finished_run
    # A second run that reuses stages 1-2 and is killed in stage 3, mid-epoch 2 (step 9; the
    # last checkpoint is step 8), then restarted with the same call.
    shutil.copytree(workdir / "checkpoints" / "stage1", tmp_path / "checkpoints" / "stage1")
    shutil.copytree(workdir / "checkpoints" / "stage2", tmp_path / "checkpoints" / "stage2")

    class Killed(Exception):
        pass

    def kill_at_step_9(stage, step):
        if stage == 3 and step == 9:
            raise Killed

    with pytest.raises(Killed):
        loop.train_and_evaluate(config, tmp_path, (1, 2, 3), data=FakeData(config), on_step=kill_at_step_9,
                                reporter=quiet_reporter(tmp_path))
    _, meta = _params(tmp_path, 3, "latest")
    assert meta["step"] == 8 and meta["data_position"] == 8 and meta["epoch"] == 1
    resumed = loop.train_and_evaluate(config, tmp_path, (1, 2, 3), data=FakeData(config),
                                      reporter=quiet_reporter(tmp_path))
    assert resumed[1]["skipped"] and resumed[2]["skipped"] and not resumed[3]["skipped"]

    expected, expected_meta = _params(workdir, 3)
    got, got_meta = _params(tmp_path, 3)
    assert got_meta["step"] == expected_meta["step"] == 12
    assert got_meta["confidence"] == pytest.approx(expected_meta["confidence"], rel=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # and training did change stage 3's parameters (the comparison is not vacuous)
    start = state_lib.initial_state(3, config, models.create_model(config.model), jax.random.key(0), workdir)
    assert not np.allclose(start["params"]["decoder"]["out"]["kernel"], got["params"]["decoder"]["out"]["kernel"])


def test_finished_stages_are_skipped_and_unchanged(finished_run):
    config, workdir, _ = finished_run
    before, _ = _params(workdir, 2)
    again = loop.train_and_evaluate(config, workdir, "1,2", data=FakeData(config), reporter=quiet_reporter(workdir))
    assert again[1]["skipped"] and again[2]["skipped"]
    after, _ = _params(workdir, 2)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)


def test_restoring_with_a_changed_model_config_names_the_fields(finished_run):
    config, workdir, _ = finished_run
    changed = tiny_config()
    changed.model.widths = (4, 16)
    changed.stage2.mask_mode = "erase"
    changed.train.log_every_steps = 3      # logging may change between runs
    with pytest.raises(checkpointing.ConfigMismatchError) as error:
        loop.train_and_evaluate(changed, workdir, (2,), data=FakeData(changed), reporter=quiet_reporter(workdir))
    message = str(error.value)
    assert "model.widths: checkpoint [4, 8], now [4, 16]" in message
    assert "stage2.mask_mode: checkpoint 'keep', now 'erase'" in message
    assert "log_every_steps" not in message and "stage 2" in message


def test_config_differences_ignores_what_may_change():
    saved = configs.to_json_dict(tiny_config())
    now = tiny_config()
    now.stage1.num_epochs = 5                 # extending a stage
    now.data.data_dir = "/elsewhere"          # moved data
    now.train.keep_checkpoints = 7
    now.stage2.omega = 3.0                    # not part of stage 1
    now.model.conv_impl, now.model.pool_impl = "xla", "xla"   # same math, other XLA formulation
    assert checkpointing.config_differences(saved, configs.to_json_dict(now), 1) == []
    assert checkpointing.config_differences(saved, configs.to_json_dict(now), 2) == [
        "stage2.omega: checkpoint 10.0, now 3.0"]
    now.optimizer.learning_rate = 0.5
    assert "optimizer.learning_rate: checkpoint 0.001, now 0.5" in checkpointing.config_differences(
        saved, configs.to_json_dict(now), 1)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(checkpoint_every_steps=2, log_every_steps=3)
    # Train batches from position 3 on (step 4, 1-based) are NaN; the check at step 6 finds it.
    with pytest.raises(loop.NonFiniteLossError, match="at step 4") as error:
        loop.train_and_evaluate(config, tmp_path, (1,), data=FakeData(config, poison_from=3),
                                reporter=quiet_reporter(tmp_path))
    assert (error.value.stage, error.value.step, error.value.last_good_step) == (1, 4, 2)
    checkpoints = checkpointing.StageCheckpoints(tmp_path, 1, read_only=True)
    assert checkpoints.manager.all_steps() == [2]   # step 4's state (after the NaN) never saved
    checkpoints.close()
    variables, meta = _params(tmp_path, 1)
    assert meta["step"] == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_metrics_jsonl_and_eval_accuracy_match_the_checkpoint(finished_run):
    config, workdir, results = finished_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["stage"], r["step"]) for r in records if r["split"] == "train"]
    # log_every_steps=2, 6 steps per epoch; stages 1-2 one epoch, stage 3 two.
    assert train == [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)] + [(3, s) for s in range(2, 13, 2)]
    assert all(np.isfinite(r["loss"]) and 1 / np.e - 1e-6 <= r["confidence"] <= 1 + 1e-6
               for r in records if r["split"] == "train")
    evals = [r for r in records if r["split"] == "model_selection"]
    assert [(r["stage"], r["step"], r["epoch"]) for r in evals] == [(1, 6, 1), (2, 6, 1), (3, 6, 1), (3, 12, 2)]
    # Independent check of the last evaluation: numpy accuracy of the checkpointed model.
    restored_config, variables, meta = checkpointing.restore_for_eval(workdir, 3, "latest")
    model = models.create_model(restored_config.model)
    correct = total = 0
    for batch in FakeData(config).eval_batches():
        logits, _ = model.apply(variables, batch["image"], train=False)
        predicted = np.asarray(logits).argmax(-1)
        correct += int(((predicted == batch["label"]) & batch["valid"]).sum())
        total += int(batch["valid"].sum())
    assert total == 16
    assert evals[-1]["accuracy"] == pytest.approx(correct / total)
    assert meta["eval"]["accuracy"] == pytest.approx(correct / total)
    assert results[3]["eval"]["accuracy"] == pytest.approx(correct / total)


def test_tensorboard_has_scalars_and_map_images(finished_run):
    from tensorboard.backend.event_processing import event_accumulator

    _, workdir, _ = finished_run
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"stage1/train/loss", "stage2/train/confidence", "stage3/model_selection/auroc",
            "stage1/maps/positive_cam", "stage3/maps/decoder"} <= tags
    assert [e.step for e in events.Tensors("stage3/maps/decoder")] == [4, 8, 12]


def test_stage3_starts_from_stage2_encoder_and_head_with_a_fresh_decoder(finished_run):
    config, workdir, results = finished_run
    model = models.create_model(config.model)
    rng = jax.random.fold_in(jax.random.key(config.seed), 3)
    start = state_lib.initial_state(3, config, model, rng, workdir)
    stage2, _ = _params(workdir, 2, "best")
    assert results[2]["best_step"] == 6
    fresh = models.init_variables(model, rng, config.data.image_size)
    for part, source in (("encoder", stage2["params"]), ("head", stage2["params"])):  # copied: exact
        for a, b in zip(jax.tree.leaves(start["params"][part]), jax.tree.leaves(source[part])):
            np.testing.assert_array_equal(a, b)
    # The decoder is initialised anew from that key; inside and outside jit the initialiser's
    # float ops may round differently (seen: 4e-8 on an Intel Xeon), so equal up to rounding.
    for a, b in zip(jax.tree.leaves(start["params"]["decoder"]), jax.tree.leaves(fresh["params"]["decoder"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(start["batch_stats"]), jax.tree.leaves(stage2["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def test_prefetch_keeps_order_and_depth():
    from pcam_jax.training import mesh as mesh_lib

    config = tiny_config()
    mesh = mesh_lib.make_mesh()
    produced = []

    def source():
        for i in range(5):
            produced.append(i)
            yield FakeData(config)._batch(np.random.default_rng(i), 8)

    stream = mesh_lib.prefetch_to_device(source(), mesh, depth=2)
    first_device, first_host = next(stream)
    assert produced == [0, 1]               # batch 1 is already on its way while 0 is used
    np.testing.assert_array_equal(np.asarray(first_device["image"]), first_host["image"])
    assert first_device["image"].sharding.spec == mesh_lib.batch_sharding(mesh).spec
    assert "path" not in first_device
    assert len(list(stream)) == 4


def test_parse_stages():
    assert stages.parse("3,1") == (1, 3)
    assert stages.parse((2,)) == (2,)
    with pytest.raises(ValueError, match="subset of 1,2,3"):
        stages.parse("1,5")
