"""One loop for all stages: data, jitted steps on a mesh, evaluation, checkpoints, logs.

The loop alone: its batches come from a `pcam_jax.data.source.DataSource`, its starting state
from `pcam_jax.training.state.initial_state`, its model selection from
`pcam_jax.training.selection`.

`train_and_evaluate(config, workdir, stages=(1, 2, 3))` runs the stages in order. What differs
between stages (losses, starting point, frozen parts, the labelled stream) is read from
`pcam_jax.training.stages`. For each stage:

- a fresh train state, or the source stage's best encoder + head with a fresh rest (stage 2
  from scratch or stage 1 per ``config.stage2.init_from``; stage 3 from stage 2), replicated
  over a mesh of all devices; batches sharded along ``data``;
- if the stage has checkpoints, the latest one is restored (after checking its config
  matches) and training resumes at its step, with the data stream at the same position;
  a stage whose checkpoint is at or past its last step is skipped;
- ``num_epochs * steps_per_epoch`` steps (``steps_per_epoch = num_train // batch_size``),
  the next batch sharded onto the devices while the current step runs;
- every ``train.log_every_steps`` (and at epoch ends) the metrics of the interval come to the
  host in one transfer: the only host syncs of the step loop; a NaN/Inf loss stops the run
  with `NonFiniteLossError` naming the first bad step, before anything is saved; so does a
  loss far above its running median or a runaway parameter norm (`DivergenceError`, see
  `pcam_jax.training.guards`);
- a stop request (``should_stop()``, e.g. a SIGTERM) is read after each step: the step is
  finished, a checkpoint saved, and `Interrupted` raised;
- a checkpoint that fails to restore is moved aside and the previous one used
  (`checkpointing.StageCheckpoints.first_intact`);
- at each epoch end: evaluation on the model-selection split (image-level classification
  metrics; its accuracy is the "validation" confidence source), then a checkpoint ranked by
  ``train.best_metric``; a stage without a trained classifier (stage 4, and stage 3 with
  ``stage3.select_by="localisation"``) is ranked instead by its
  decoder's PxAP on the held-out lesion masks (``heldout_pxap``, one jitted pass over at most
  ``train.heldout_selection_images`` images read once), or keeps its latest where the run has none
  (`pcam_jax.training.selection.criterion`, stored in every checkpoint's meta). Mid-epoch
  checkpoints every ``train.checkpoint_every_steps``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import jax
import numpy as np

from pcam_jax import configs, models
from pcam_jax.errors import DeadDecoderError, DeadTrainingError, DivergenceError, Interrupted, NonFiniteLossError
from pcam_jax.data import clinician_labels
from pcam_jax.data.source import DataSource, PipelineData
from pcam_jax.training import checkpointing, guards, mesh as mesh_lib, reporting, stages as stages_lib
from pcam_jax.training import selection, state as state_lib, steps
from pcam_jax.training.mesh import prefetch_to_device

NUM_IMAGE_SUMMARIES = 4


def _stage_seed(config, stage: int) -> int:
    return 1000 * int(config.seed) + stage


def train_stage(stage: int, config, workdir, data: DataSource, mesh, reporter: reporting.Reporter,
                *, on_step: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict:
    """Train (or resume, or skip) one stage; returns its summary (step, epoch, eval metrics, seconds)."""
    started = time.perf_counter()
    spec = stages_lib.get(stage)
    batch_size = int(config.data.batch_size)
    steps_per_epoch = int(data.steps_per_epoch)
    num_epochs = int(spec.settings(config).num_epochs)
    total_steps = num_epochs * steps_per_epoch
    log_every = max(int(config.train.log_every_steps), 1)
    image_every = int(config.train.image_summary_every_steps)
    checkpoint_every = int(config.train.checkpoint_every_steps)
    config_json = configs.to_json_dict(config)

    model = models.create_model(config.model)
    checkpoints = checkpointing.StageCheckpoints.from_config(workdir, stage, config)
    try:
        def restore_checked(step):
            saved = checkpoints.read_meta(step)
            saved_config = configs.to_json_dict(configs.complete(saved["config"]))  # a field it predates: its old value
            checkpointing.check_compatible(saved_config, config_json, stage, checkpoints.directory)
            return checkpoints.restore(state_lib.abstract_state(config, model, mesh), step)

        # The newest checkpoint that restores (each one that does not is moved aside).
        latest, restored = checkpoints.first_intact(checkpoints.latest_step, restore_checked)
        if latest is not None:
            state, saved = restored
            if latest >= total_steps:
                reporter.message(f"stage {stage}: finished at step {latest} (checkpoint in "
                                 f"{checkpoints.directory}); skipping")
                return {"stage": stage, "step": latest, "epoch": saved["epoch"], "eval": saved.get("eval"),
                        "best_step": checkpoints.best_step(), "seconds": 0.0, "skipped": True}

        rng = jax.random.fold_in(jax.random.key(int(config.seed)), stage)
        start = 0
        if latest is None:
            state = state_lib.initial_state(stage, config, model, rng, workdir, mesh)
        else:
            start = int(saved["data_position"])
            reporter.message(f"stage {stage}: resuming from step {start} ({checkpoints.directory})")

        train_step = mesh_lib.jit_train_step(steps.make_train_step(spec, config, model, total_steps), mesh, state)
        eval_step = jax.jit(steps.make_eval_step(model))
        by_localisation = spec.ranked_by_localisation(config)
        heldout, heldout_images = selection.heldout_batches(data, config) if by_localisation else (None, 0)
        chosen_by = selection.criterion(spec, config, heldout_images)
        if by_localisation:   # said once: what its "best" checkpoint will mean
            reporter.message(f"stage {stage}: best checkpoint by {selection.describe(chosen_by)}")
        decoder_map_step = jax.jit(steps.make_decoder_map_step(model)) if heldout else None
        maps_fn = reporting.jit_summary_maps(model, stage=spec, logit_difference=bool(config.stage2.logit_difference))
        seed = _stage_seed(config, stage)
        depth = int(config.data.prefetch)
        batches = prefetch_to_device(data.train_batches(seed=seed, start_step=start), mesh, depth)
        labelled = (prefetch_to_device(data.labelled_batches(seed=seed, start_step=start), mesh, depth)
                    if spec.needs_labelled else None)

        pending: list[tuple[int, dict]] = []   # (step, device metrics) not yet checked
        guard = guards.DivergenceGuard.from_config(config.train)
        dead_guard = guards.DeadGradientGuard(int(config.train.dead_gradient_steps))
        dead_decoder = guards.DeadDecoderGuard(int(config.train.dead_gradient_steps))
        guard.check_norm(float(state_lib.params_norm(state["params"])))   # the reference: the starting norm
        last_saved = start
        last_eval = None
        interval_start, interval_steps = time.perf_counter(), 0

        def check_pending() -> dict[str, float] | None:
            """Fetch the pending metrics (one transfer), stop on the first non-finite loss."""
            if not pending:
                return None
            fetched = jax.device_get([m for _, m in pending])
            for (step, _), values in zip(pending, fetched):
                if values.get("nonfinite", 0.0) > 0 or not np.isfinite(values["loss"]):
                    checkpoints.wait()
                    raise NonFiniteLossError(stage, step, checkpoints.latest_step(), checkpoints.directory)
                dead = dead_guard.update(step, float(values["grad_norm"]))
                if dead is not None:
                    checkpoints.wait()
                    raise DeadTrainingError(stage, step, checkpoints.latest_step(), checkpoints.directory, dead)
                dead = dead_decoder.update(step, float(values["decoder_max"])) if "decoder_max" in values else None
                if dead is not None:
                    checkpoints.wait()
                    raise DeadDecoderError(stage, step, checkpoints.latest_step(), checkpoints.directory, dead)
                reason = guard.update(step, float(values["loss"]))
                if reason is None and step == pending[-1][0]:
                    reason = guard.check_norm(float(state_lib.params_norm(state["params"])))
                if reason is not None:
                    checkpoints.wait()
                    raise DivergenceError(stage, step, checkpoints.latest_step(), checkpoints.directory, reason)
            pending.clear()
            return reporting.mean_metrics(fetched)

        def save(done: int, metrics: dict | None) -> None:
            nonlocal last_saved
            last_saved = done
            confidence = state_lib.host_confidence(state)
            meta = {"stage": stage, "step": done, "epoch": done // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps, "data_position": done, "labelled_position": done if spec.needs_labelled else 0,
                    "confidence": confidence, "eval": metrics, "config": config_json, "selection": chosen_by}
            ranked = None if chosen_by["metric"] == selection.LATEST else metrics   # LATEST: none ranked
            checkpoints.save(state, meta, ranked)

        reporter.start_stage(stage, initial_step=start, total_steps=total_steps)
        for done in range(start + 1, total_steps + 1):
            device_batch, host_batch = next(batches)
            extra = (next(labelled)[0],) if labelled is not None else ()
            state, metrics = train_step(state, device_batch, *extra)
            pending.append((done, metrics))
            interval_steps += 1
            reporter.progress()
            epoch_end = done % steps_per_epoch == 0
            if done % log_every == 0 or epoch_end:
                means = check_pending()
                elapsed = time.perf_counter() - interval_start
                means["images_per_second"] = interval_steps * batch_size / max(elapsed, 1e-9)
                reporter.log_train(done, means)
                interval_start, interval_steps = time.perf_counter(), 0
            if reporter.enabled and image_every > 0 and done % image_every == 0:
                images = np.asarray(host_batch["image"][:NUM_IMAGE_SUMMARIES], np.float32)
                maps = jax.device_get(maps_fn(state_lib.local_variables(state), images))
                reporter.log_images(done, images, maps)
            if epoch_end:
                last_eval = selection.evaluate(eval_step, state, data.eval_batches(), mesh)
                if heldout:   # what ranks this stage (`Stage.ranked_by_localisation`), in the same record
                    last_eval[selection.HELDOUT_PXAP] = selection.heldout_pxap(decoder_map_step, state, heldout, mesh)
                # The "validation" confidence source: P = the last model-selection accuracy.
                state = {**state, "confidence": {**state["confidence"], "val_accuracy": mesh_lib.replicate(
                    np.float32(last_eval["accuracy"]), mesh)}}
                save(done, last_eval)
                reporter.log_eval(done, done // steps_per_epoch, last_eval)
            elif checkpoint_every > 0 and done % checkpoint_every == 0:
                check_pending()  # never save a state that has seen a non-finite loss
                save(done, None)
            if on_step is not None:
                on_step(stage, done)
            if should_stop is not None and should_stop() and done < total_steps:
                if last_saved != done:
                    check_pending()   # never save a state that has seen a non-finite loss
                    save(done, None)
                checkpoints.wait()
                raise Interrupted(stage, done, checkpoints.directory / str(done),
                                  getattr(should_stop, "signal_name", "") or "stop requested")
        checkpoints.wait()
        reporter.end_stage()
        return {"stage": stage, "step": total_steps, "epoch": num_epochs, "eval": last_eval,
                "best_step": checkpoints.best_step(), "seconds": time.perf_counter() - started, "skipped": False}
    finally:
        reporter.end_stage()
        checkpoints.wait()
        checkpoints.close()


def train_and_evaluate(config, workdir, stages: str | Iterable[int] = stages_lib.DEFAULT, *, data: DataSource | None = None,
                       data_dir: str | None = None, mesh=None, reporter: reporting.Reporter | None = None,
                       on_step: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> dict[int, dict]:
    """Train ``stages`` in order in ``workdir`` (resuming whatever is there); {stage: summary}.

    Args:
      config: a `ConfigDict` (`pcam_jax.configs.get_config`).
      workdir: run directory: checkpoints/, metrics.jsonl, tensorboard/.
      stages: e.g. (1, 2, 3) or "2,3"; stages 2 (init_from stage1) and 3 need the previous
        stage's checkpoints in ``workdir``.
      data: a `DataSource`; default `PipelineData` over the TFDS dataset in ``data_dir``.
      mesh: default `mesh.make_mesh()` over all devices.
      on_step: ``on_step(stage, step)`` after each step is dispatched (tests use it to interrupt).
      should_stop: read after each step; when true the step is saved and `Interrupted` raised
        (`guards.StopOnSignals.stop_requested`; its ``signal_name`` attribute names the cause).
    """
    stages = stages_lib.parse(stages)
    for spec in stages_lib.STAGES.values():  # a bad setting of any stage fails before stage 1 trains
        spec.source(config)
    steps.check_config(config)
    clinician_labels.check_config(config, any(stages_lib.get(s).needs_labelled for s in stages))
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    data = PipelineData(config, data_dir) if data is None else data
    own_reporter = reporter is None
    reporter = reporting.Reporter(workdir) if own_reporter else reporter
    try:
        results = {}
        for stage in stages:
            if should_stop is not None and should_stop() and results:  # asked between two stages
                done, last = list(results.items())[-1]
                raise Interrupted(done, last["step"], checkpointing.stage_directory(workdir, done) / str(last["step"]),
                                  getattr(should_stop, "signal_name", "") or "stop requested")
            results[stage] = train_stage(stage, config, workdir, data, mesh, reporter, on_step=on_step,
                                         should_stop=should_stop)
        return results
    finally:
        if own_reporter:
            reporter.close()
