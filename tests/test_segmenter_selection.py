"""Stage 4 (the few-label segmenter, classifier head frozen at random) keeps as "best" the checkpoint
whose decoder localises best on the held-out masks, not the one its random head's AUROC favours;
so does stage 3 with ``stage3.select_by="localisation"``, and not with the default.

The reference is recomputed from the saved checkpoints alone, by another path than the loop's:
the analysis API's maps (`pcam_jax.run.analysis.Run`, the harness's jitted maps function), the
held-out split read by `pcam-jax evaluate`'s collector, and PxAP as a plain loop over thresholds.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from pcam_jax import configs, maps
from pcam_jax.data import pipeline
from pcam_jax.evaluation import evaluate
from pcam_jax.run import analysis
from pcam_jax.training import checkpointing, loop, reporting, selection, stages

pytestmark = pytest.mark.usefixtures("fast_compilation")   # see conftest.py

EPOCHS = 5


def reference_pxap(maps_, masks) -> float:
    """PxAP by its definition (Choe et al. 2020; wsolevaluation's grid arange(0, 1, 0.01) plus 1):
    for each threshold from high to low, pooled pixel precision and recall of ``map >= t``, and
    the area sum(precision * recall step)."""
    scores, truth = np.asarray(maps_, np.float64).ravel(), np.asarray(masks).ravel() > 0
    area, previous_recall = 0.0, 0.0
    for t in sorted(set(np.arange(0.0, 1.0, 0.01).tolist()) | {1.0}, reverse=True):
        predicted = scores >= t
        tp = int(np.sum(predicted & truth))
        recall = tp / int(truth.sum())
        precision = tp / int(predicted.sum()) if predicted.any() else 0.0
        area += precision * (recall - previous_recall)
        previous_recall = recall
    return area


@pytest.fixture(scope="module")
def segmenter_run(tmp_path_factory):
    """Stage 4 alone on the tiny synthetic data, every epoch's checkpoint kept: (config, workdir, log)."""
    workdir = tmp_path_factory.mktemp("segmenter")
    config = configs.get_config("tiny")
    config.data.data_dir = str(workdir / "data")
    config.stage4.num_epochs = EPOCHS
    config.optimizer.learning_rate = 3e-3
    config.train.keep_checkpoints = EPOCHS + 1
    config.eval.evaluators = "classification,localisation"
    reporter = reporting.Reporter(workdir, enabled=True, progress_bar=False, tensorboard=False)
    try:
        loop.train_and_evaluate(config, workdir, (4,), reporter=reporter)
    finally:
        reporter.close()
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return config, workdir, log


@pytest.fixture(scope="module")
def stage3_by_localisation(tmp_path_factory):
    """Stages 1-3 on the tiny synthetic data, stage 3 ranked by its decoder's held-out PxAP, every
    stage-3 epoch's checkpoint kept: (config, workdir)."""
    workdir = tmp_path_factory.mktemp("stage3")
    config = configs.get_config("tiny")
    config.data.data_dir = str(workdir / "data")
    config.stage1.num_epochs = config.stage2.num_epochs = 1
    config.stage3.num_epochs = EPOCHS
    config.stage3.select_by = "localisation"
    config.optimizer.learning_rate = 3e-3
    config.train.keep_checkpoints = EPOCHS + 1
    reporter = reporting.Reporter(workdir, enabled=True, progress_bar=False, tensorboard=False)
    try:
        loop.train_and_evaluate(config, workdir, (1, 2, 3), reporter=reporter)
    finally:
        reporter.close()
    return config, workdir


def _heldout(config):
    """Images (model size) and masks of the held-out split's lesion images, read as `evaluate` reads them."""
    images, masks = [], []
    for batch in pipeline.eval_batches(config, pipeline.load_records(config, "heldout_labelled", config.data.data_dir)):
        keep = batch["valid"] & batch["has_mask"] & batch["mask"].reshape(len(batch["valid"]), -1).any(axis=1)
        images.append(batch["image"][keep])
        masks.append(batch["mask"][keep])
    return np.concatenate(images), np.concatenate(masks)


@pytest.mark.parametrize("stage", [4, 3])
def test_best_checkpoint_is_the_one_whose_decoder_scores_the_highest_heldout_pxap(stage, request):
    run = request.getfixturevalue("segmenter_run" if stage == 4 else "stage3_by_localisation")
    config, workdir = run[0], run[1]
    images, masks = _heldout(config)
    assert len(images) == config.synthetic.num_heldout_labelled
    checkpoints = checkpointing.StageCheckpoints(workdir, stage, read_only=True)
    saved = sorted(checkpoints.manager.all_steps())
    checkpoints.close()
    recomputed, stored = {}, {}
    for step in saved:
        raw = analysis.load(workdir, stage, step).raw_maps(images, ("decoder",))["decoder"]
        size = int(config.data.image_size)
        recomputed[step] = reference_pxap(np.asarray(maps.postprocess(jnp.asarray(raw), size, size)), masks)
        _, _, meta = checkpointing.restore_for_eval(workdir, stage, step)
        stored[step] = meta["eval"]["heldout_pxap"]
        assert meta["selection"] == {"metric": "heldout_pxap", "mode": "max", "split": "heldout_labelled",
                                     "images": len(images)}
    assert len(saved) == EPOCHS
    np.testing.assert_allclose([stored[s] for s in saved], [recomputed[s] for s in saved], atol=1e-4)
    assert max(recomputed.values()) - min(recomputed.values()) > 1e-3   # the epochs differ: the choice is not vacuous
    best = analysis.load(workdir, stage, "best").step
    assert recomputed[best] >= max(recomputed.values()) - 1e-4, (best, recomputed)


def test_stage3_by_default_is_ranked_on_model_selection_auroc(stage3_by_localisation):
    config, _ = stage3_by_localisation
    spec = stages.get(3)
    assert selection.criterion(spec, configs.get_config("tiny"), 40) == {
        "metric": "auroc", "mode": "max", "split": "model_selection", "images": None}
    assert selection.criterion(spec, config, 40)["metric"] == "heldout_pxap"
    wrong = config.copy_and_resolve_references()
    wrong.stage3.select_by = "pxap"
    with pytest.raises(ValueError, match=r"config.stage3.select_by must be one of \('classification', 'localisation'\)"):
        loop.train_and_evaluate(wrong, "/nonexistent", (3,))


def test_the_choice_is_logged_and_reported_by_evaluate(segmenter_run):
    config, workdir, log = segmenter_run
    heldout = [r for r in log if "heldout_pxap" in r]   # in each epoch's model_selection record
    assert [r["epoch"] for r in heldout] == list(range(1, EPOCHS + 1))
    assert all(r["split"] == "model_selection" and 0 <= r["heldout_pxap"] <= 1 for r in heldout)
    metrics = evaluate.evaluate_workdir(workdir, verbose=False)
    criterion = f"heldout_pxap (max) on {config.synthetic.num_heldout_labelled} heldout_labelled images"
    assert metrics["checkpoint_selection"] == {"stage4": criterion}
    logged = {r["step"]: r["heldout_pxap"] for r in heldout}
    assert logged[metrics["checkpoint_steps"]["stage4"]] == max(logged.values())   # evaluate's default: the best
    assert f"stage4 step {metrics['checkpoint_steps']['stage4']} (chosen by {criterion})" in (
        workdir / "eval" / "report.md").read_text()


class NoHeldOutMasks:
    """The tiny synthetic data through the loop's own source, as a dataset without held-out masks
    (MURA, a folder) presents itself: `heldout_mask_batches` gives None."""

    def __init__(self, config):
        from pcam_jax.data.source import PipelineData

        self.inner = PipelineData(config)
        self.steps_per_epoch = self.inner.steps_per_epoch

    def train_batches(self, *, seed, start_step):
        return self.inner.train_batches(seed=seed, start_step=start_step)

    def labelled_batches(self, *, seed, start_step):
        return self.inner.labelled_batches(seed=seed, start_step=start_step)

    def eval_batches(self):
        return self.inner.eval_batches()

    def heldout_mask_batches(self, limit):
        return None


def test_without_heldout_masks_the_best_is_the_latest_said_once(segmenter_run, tmp_path, capsys):
    config, _, _ = segmenter_run
    config = config.copy_and_resolve_references()
    config.stage4.num_epochs = 2
    reporter = reporting.Reporter(tmp_path, enabled=True, progress_bar=False, tensorboard=False)
    try:
        loop.train_and_evaluate(config, tmp_path, (4,), data=NoHeldOutMasks(config), reporter=reporter)
    finally:
        reporter.close()
    said = [line for line in capsys.readouterr().out.splitlines() if "best checkpoint by" in line]
    assert said == ["stage 4: best checkpoint by recency: the latest (no held-out lesion masks to rank it on)"]
    _, _, meta = checkpointing.restore_for_eval(tmp_path, 4, "best")
    assert meta["step"] == meta["total_steps"]   # the last step: nothing ranked it
    assert meta["selection"]["metric"] == "latest" and "heldout_pxap" not in meta["eval"]
    assert analysis.load(tmp_path, 4).selected_by.startswith("recency: the latest")


def test_an_interrupted_segmenter_resumes_to_the_same_ranking(segmenter_run, tmp_path):
    config, workdir, log = segmenter_run
    config = config.copy_and_resolve_references()
    config.train.checkpoint_every_steps = 4   # train.* is not compared on resume

    class Killed(Exception):
        pass

    def kill_at_step_15(stage, step):   # mid-epoch 3; the last checkpoint is step 12 (an epoch end)
        if step == 15:
            raise Killed

    for on_step in (kill_at_step_15, None):
        reporter = reporting.Reporter(tmp_path, enabled=True, progress_bar=False, tensorboard=False)
        try:
            loop.train_and_evaluate(config, tmp_path, (4,), reporter=reporter, on_step=on_step)
        except Killed:
            pass
        finally:
            reporter.close()
    resumed = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    pxap = lambda records: {r["step"]: r["heldout_pxap"] for r in records if "heldout_pxap" in r}
    assert pxap(resumed).keys() == pxap(log).keys()
    np.testing.assert_allclose(list(pxap(resumed).values()), list(pxap(log).values()), rtol=1e-5)
    assert analysis.load(tmp_path, 4).step == analysis.load(workdir, 4).step
