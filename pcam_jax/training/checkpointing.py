"""Orbax checkpoints: one `CheckpointManager` per stage, resume by default, restore for evaluation.

Layout::

    <workdir>/checkpoints/stage{N}/<step>/
        state/     the train state: {"step", "params", "batch_stats", "opt_state", "confidence"}
        meta/      JSON: stage, step, epoch, data position, confidence (lambda) state, the
                   resolved config, what ranks "best" (`selection.criterion`), and the
                   model-selection metrics when saved after an eval
        metrics/   the model-selection metrics (Orbax's own copy, used to rank "best")

Retention: ONE manager per stage whose preservation policy keeps a checkpoint when it is
among the latest ``config.train.keep_checkpoints`` OR it is the best one by
``config.train.best_metric`` / ``best_mode`` (stage 4: ``heldout_pxap``, max). Only end-of-epoch
checkpoints carry metrics (mid-epoch ones, from ``train.checkpoint_every_steps``, do not), so
"best" is always an end-of-epoch checkpoint, and the latest one is always there to resume from.

A checkpoint that fails to restore (a file missing or truncated, an empty step directory) is
reported by step and path on stderr, moved aside to ``stage{N}/damaged/<step>-<time>/`` (never
deleted) and the next one is tried (`StageCheckpoints.first_intact`): training resumes from,
and evaluation and `pcam_jax.load` read, the newest intact checkpoint.

Resume is checked, not trusted: `config_differences` compares the saved config with the
current one (the sections that change what a checkpoint means) and `check_compatible`
raises `ConfigMismatchError` naming every differing field.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from pcam_jax import configs
from pcam_jax.errors import CheckpointError, ConfigMismatchError, StorageError, describe_os_error, environment_cause
from pcam_jax.training import selection, stages as stages_lib

# Fields that may change between a run and its resumption without changing what the
# checkpoint means: where the data lives, evaluation batching, prefetch depth, how XLA is
# asked to compute the same math (the model's *_impl choices share parameters and results),
# and the number of epochs (extending a finished stage continues it). `train.*` and `eval.*`
# (logging, checkpoint cadence, evaluation settings) are never compared.
_RESUMABLE_FIELDS = ("data.data_dir", "data.folder_root", "data.prefetch", "data.eval_batch_size",
                     "data.skip_corrupt", "model.conv_impl", "model.pool_impl")


class _ExpectedOrbaxWarnings(logging.Filter):
    """Mid-epoch checkpoints carry no metrics by design; Orbax warns about each one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


absl_logging.get_absl_logger().addFilter(_ExpectedOrbaxWarnings())


class _DropOrbaxNoise(logging.Filter):
    """Orbax warns at every read-only open and every partial restore (we read the JSON item
    alone to check configs); neither is news to the reader of a training log."""

    NOISE = ("could not be restored", "Given directory is read only", "read_only=True")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


logging.getLogger("absl").addFilter(_DropOrbaxNoise())


class _DropEnvironmentTracebacks(logging.Filter):
    """A disk-full / permission error in Orbax's background save thread is logged with its
    traceback there, then re-raised in the loop, which turns it into one line (`StorageError`):
    drop the log record (``PCAM_JAX_TRACEBACK=1`` keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or os.environ.get("PCAM_JAX_TRACEBACK", "") not in ("", "0"):
            return True
        return environment_cause(error) is None


absl_logging.get_absl_logger().addFilter(_DropEnvironmentTracebacks())


DAMAGED = "damaged"   # stage{N}/damaged/<step>-<time>/: checkpoints that failed to restore


def _is_damage(error: Exception) -> bool:
    """Whether a failed restore means the checkpoint's files are bad (not the config, the disk
    or the machine)."""
    if isinstance(error, (ConfigMismatchError, MemoryError)) or environment_cause(error) is not None:
        return False
    text = str(error).lower()
    return not any(sign in text for sign in ("resource_exhausted", "out of memory"))  # the device's, not the files'


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


@contextlib.contextmanager
def _storage_errors(checkpoints: "StageCheckpoints", doing: str):
    """Disk full / permission denied while ``doing`` -> `StorageError` naming the directory and
    the newest complete checkpoint (a save cut short is never used: Orbax writes into a
    temporary directory and renames it when done)."""
    try:
        yield
    except Exception as error:
        cause = environment_cause(error)
        if cause is None or isinstance(error, StorageError):
            raise
        kept = checkpoints.manager.latest_step()
        kept = (f"the checkpoint of step {kept} is complete" if kept is not None
                else "no checkpoint of this stage is complete")
        raise StorageError(describe_os_error(cause, f"{doing} in {checkpoints.directory} ({kept})")) from error


def _item_handlers() -> dict:
    """The handlers of the two items, given up front: with only their names, a manager that has
    not saved yet answers `item_metadata` with None, and a restore then falls back to the
    devices the checkpoint was saved on (and fails on a machine with other devices)."""
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def stage_directory(workdir: str | pathlib.Path, stage: int) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints" / f"stage{stage}"


def _compared_sections(stage: int, config: Mapping) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sections compared, dotted fields ignored) when resuming stage ``stage``."""
    spec = stages_lib.get(stage)
    sections = ["seed", "model", "data", "optimizer", spec.name]
    if config["data"]["dataset"] == "synthetic":
        sections.append("synthetic")
    ignored = list(_RESUMABLE_FIELDS) + [f"{spec.name}.num_epochs"]
    for number in spec.also_compared:  # e.g. stage 3 optimises stage 2's loss: its settings matter,
        other = stages_lib.get(number)   # its schedule and starting point do not
        sections.append(other.name)
        ignored += [f"{other.name}.num_epochs"] + ([f"{other.name}.{other.init_option}"] if other.init_option else [])
    return tuple(sections), tuple(ignored)


def config_differences(saved: Mapping, current: Mapping, stage: int) -> list[str]:
    """Lines ``"model.widths: checkpoint [4, 8], now [4, 16]"`` for fields that differ.

    Both configs are JSON-style dicts (`pcam_jax.configs.to_json_dict`). Pure: no I/O.
    """
    sections, ignored = _compared_sections(stage, current)
    flat_saved = {k: v for k, v in configs.flatten(dict(saved)).items() if k.split(".")[0] in sections}
    flat_now = {k: v for k, v in configs.flatten(dict(current)).items() if k.split(".")[0] in sections}
    lines = []
    for key in sorted(set(flat_saved) | set(flat_now)):
        if key in ignored:
            continue
        missing = "<absent>"
        before, after = flat_saved.get(key, missing), flat_now.get(key, missing)
        if before != after:
            lines.append(f"{key}: checkpoint {before!r}, now {after!r}")
    return lines


def check_compatible(saved: Mapping, current: Mapping, stage: int, directory: Any) -> None:
    """Raise `ConfigMismatchError` naming the differing fields, with the two ways out."""
    differences = config_differences(saved, current, stage)
    if differences:
        raise ConfigMismatchError(
            f"the stage {stage} checkpoint in {directory} was written with a different config:\n  "
            + "\n  ".join(differences)
            + "\nUse the config the run was started with (it is stored in the checkpoint's meta/ item), "
              "or a new --workdir to start a new run.")


class StageCheckpoints:
    """The checkpoints of one stage: save, resume, best and latest.

    ``save(state, meta, metrics)``: ``metrics`` (the model-selection metrics of an eval) make
    the checkpoint a candidate for "best"; ``None`` for mid-epoch checkpoints.
    Saves are asynchronous; call `wait` before reading them back and `close` at the end.
    """

    def __init__(self, workdir, stage: int, *, keep: int = 2, best_metric: str = "auroc",
                 best_mode: str = "max", read_only: bool = False):
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.train.best_mode must be 'max' or 'min', got {best_mode!r}")
        self.stage = stage
        self.directory = stage_directory(workdir, stage)
        self.best_metric, self.best_mode = best_metric, best_mode
        worst = -math.inf if best_mode == "max" else math.inf

        def metric_of(metrics):  # an undefined metric (NaN, e.g. AUROC of one class) ranks last,
            value = float(metrics.get(best_metric, math.nan))   # as one a checkpoint predates
            return worst if math.isnan(value) else value

        policy = ocp_policies.AnyPreservationPolicy([
            ocp_policies.LatestN(n=max(int(keep), 1)),
            ocp_policies.BestN(get_metric_fn=metric_of, reverse=best_mode == "min", n=1,
                               keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy, best_fn=metric_of, best_mode=best_mode,
            read_only=read_only, create=not read_only,
            cleanup_tmp_directories=not read_only)   # the remains of a save a kill cut short
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no stage {stage} checkpoints: {self.directory} does not exist "
                                  f"(train it with `pcam-jax train --stages {stage} ...`)")
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_handlers=_item_handlers())
        except OSError as error:
            if environment_cause(error) is None:
                raise
            raise StorageError(describe_os_error(error, f"opening {self.directory}")) from error

    @classmethod
    def from_config(cls, workdir, stage: int, config) -> "StageCheckpoints":
        """Ranked as `selection.criterion` says: ``train.best_metric``, or for a stage without a
        trained classifier `selection.HELDOUT_PXAP` (none of its checkpoints carries metrics where
        the run has no held-out masks: its "best" is then its latest)."""
        metric, mode = selection.ranking(stages_lib.get(stage), config)
        return cls(workdir, stage, keep=config.train.keep_checkpoints, best_metric=metric, best_mode=mode)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """Best end-of-epoch checkpoint by the metric; the latest one if none has metrics."""
        best = self.manager.best_step()
        return best if best is not None else self.manager.latest_step()

    def save(self, state: dict, meta: Mapping, metrics: Mapping | None = None) -> None:
        step = int(meta["step"])
        if metrics is not None:
            if self.best_metric not in metrics:
                raise KeyError(f"config.train.best_metric={self.best_metric!r} is not among the "
                               f"evaluation metrics {sorted(metrics)}")
            metrics = {k: float(v) for k, v in metrics.items()}
        with _storage_errors(self, f"saving a stage {self.stage} checkpoint (step {step} or the one before)"):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
                metrics=metrics, force=True)

    def first_intact(self, pick: Callable[[], int | None], load: Callable[[int], Any]) -> tuple[int | None, Any]:
        """``(step, load(step))`` for the step ``pick()`` names (e.g. ``self.latest_step``).

        A step whose ``load`` fails because its files are bad is reported (step, path, cause),
        moved to ``damaged/`` and ``pick`` asked again; ``(None, None)`` when none is left.
        Errors of the config (`ConfigMismatchError`) or the machine (disk, permissions) raise.
        """
        while (step := pick()) is not None:
            try:
                return step, load(step)
            except Exception as error:  # noqa: BLE001 - Orbax, TensorStore and JSON errors alike
                if not _is_damage(error):
                    raise
                self._set_aside(step, error)
        return None, None

    def _set_aside(self, step: int, error: Exception) -> None:
        source = self.directory / str(step)
        target = self.directory / DAMAGED / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)
        except FileNotFoundError:
            pass   # another process moved it already
        except OSError as move_error:
            raise CheckpointError(
                f"stage {self.stage} checkpoint step {step} ({source}) cannot be restored ({_first_line(error)}) "
                f"and cannot be moved aside ({move_error.strerror}): move it out of {self.directory} "
                "and re-run to use the previous one") from error
        print(f"pcam-jax: stage {self.stage} checkpoint step {step} ({source}) cannot be restored "
              f"({_first_line(error)}); moved to {target}, trying the previous one", file=sys.stderr, flush=True)
        self.manager.reload()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, target_state: dict, step: int | None = None) -> tuple[dict, dict]:
        """(state, meta) at ``step`` (latest by default) with the structure and shardings of
        ``target_state`` (arrays or `jax.ShapeDtypeStruct`s)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        # Re-impose the target's tree structure (optax states are namedtuples).
        state = jax.tree.unflatten(jax.tree.structure(target_state), jax.tree.leaves(restored["state"]))
        return state, restored["meta"]

    def restore_variables(self, step: int, sharding: jax.sharding.Sharding) -> dict:
        """``{"params", "batch_stats"}`` at ``step``, every leaf placed with ``sharding``.

        Built from the checkpoint's own metadata, so it needs neither the model nor the
        optimizer that wrote it (carry-over between stages, evaluation, analysis).
        """
        tree = self.manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return {"params": restored["state"]["params"], "batch_stats": restored["state"]["batch_stats"]}

    def wait(self) -> None:
        with _storage_errors(self, f"saving a stage {self.stage} checkpoint"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with _storage_errors(self, f"saving a stage {self.stage} checkpoint"):
            self.manager.close()


def _picker(checkpoints: StageCheckpoints, which: str | int) -> Callable[[], int | None]:
    """The step ``which`` ("best", "latest" or a step number) names now; None when none is left."""
    if isinstance(which, int):
        steps = checkpoints.manager.all_steps()
        if which not in steps:
            raise CheckpointError(f"no step {which} in {checkpoints.directory}; available: {sorted(steps)} "
                                  "(--which best, latest or one of these)")
        return lambda: which if which in checkpoints.manager.all_steps() else None
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best', 'latest' or a step number, got {which!r}")
    return checkpoints.best_step if which == "best" else checkpoints.latest_step


def intact_variables(checkpoints: StageCheckpoints, which: str | int, sharding) -> tuple[int, dict, dict]:
    """``(step, variables, meta)`` of the newest intact checkpoint ``which`` names (damaged
    ones are moved aside, see `StageCheckpoints.first_intact`); `CheckpointError` if none is."""
    step, loaded = checkpoints.first_intact(
        _picker(checkpoints, which), lambda s: (checkpoints.restore_variables(s, sharding), checkpoints.read_meta(s)))
    if loaded is None:
        damaged = checkpoints.directory / DAMAGED
        raise CheckpointError(
            f"{checkpoints.directory} holds no intact checkpoint" + (f" of step {which}" if isinstance(which, int) else "")
            + (f" (damaged ones are in {damaged})" if damaged.is_dir() else "")
            + f": train stage {checkpoints.stage} (`pcam-jax train --stages {checkpoints.stage} ...`)")
    return step, *loaded


def restore_for_eval(workdir, stage: int, which: str | int = "best"
                     ) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """(config, variables, meta) of a trained stage, from its checkpoint alone.

    ``variables = {"params", "batch_stats"}`` on the first local device; the config is the
    one stored in the checkpoint (so it rebuilds the right network); ``which`` is "best"
    (by the criterion the run itself ranked with, `selection.recorded`), "latest" or a step. A
    checkpoint that fails to restore is moved aside and the next one of that kind used.
    """
    checkpoints = StageCheckpoints(workdir, stage, read_only=True)
    try:
        _, latest_meta = checkpoints.first_intact(checkpoints.latest_step, checkpoints.read_meta)
        if latest_meta is not None:
            chosen = selection.recorded(latest_meta)
            if which == "best" and chosen["metric"] == selection.LATEST:
                which = "latest"
            elif (chosen["metric"], chosen["mode"]) != (checkpoints.best_metric, checkpoints.best_mode):
                checkpoints.close()  # rank "best" by the metric the run itself used
                checkpoints = StageCheckpoints(workdir, stage, read_only=True, best_metric=chosen["metric"],
                                               best_mode=chosen["mode"])
        device = jax.local_devices()[0]
        _, variables, meta = intact_variables(checkpoints, which, jax.sharding.SingleDeviceSharding(device))
    finally:
        checkpoints.close()
    return configs.complete(meta["config"]), variables, meta


def trained_stages(workdir) -> list[int]:
    """Stages with at least one checkpoint in `workdir`."""
    found = []
    for stage in stages_lib.NUMBERS:
        directory = stage_directory(workdir, stage)
        if directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir()):
            found.append(stage)
    return found
