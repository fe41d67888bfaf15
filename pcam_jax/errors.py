"""The project's known failures: exception classes every module raises, and their exit statuses.

Each is an error a user can act on, and its message says what is wrong and the fix. The
commands (`pcam_jax.cli`) turn them into one line on stderr and the exit status below; a
library user catches them like any exception. Importing this module costs nothing (no JAX).

    status  meaning
    0       done
    1       training stopped: the loss became NaN/Inf or diverged (the last good checkpoint is kept)
    2       bad input: arguments, config fields or values, data, images, map method, or a
            checkpoint that is missing, damaged beyond the last intact one, or was written
            with a different config
    3       interrupted and saved: SIGTERM/SIGINT (preemption, Ctrl-C) stopped training after
            the step in flight and wrote a checkpoint; re-run the same command to resume
    4       environment: disk full, quota, read-only file system or permission denied while
            writing or reading the work directory; free space / fix permissions and re-run
    130     Ctrl-C in a command with nothing to save (evaluate, maps, prepare)
    (a second SIGTERM/SIGINT ends the process at once, killed by that signal: 143 / 130 in a shell)
"""

from __future__ import annotations

import errno
import os

EXIT_OK, EXIT_TRAINING_STOPPED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_ENVIRONMENT = 0, 1, 2, 3, 4

# OSError numbers that are the machine's fault, not the input's: status 4.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class TrainingStoppedError(RuntimeError):
    """Training stopped at ``step`` of ``stage``; nothing after ``last_good_step`` was saved."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory, what: str, fix: str):
        self.stage, self.step, self.last_good_step, self.directory = stage, step, last_good_step, directory
        kept = (f"the last good checkpoint, step {last_good_step}, is kept in {directory}"
                if last_good_step is not None else "no checkpoint of this stage had been saved")
        super().__init__(f"stage {stage}: {what} at step {step}; training stopped and nothing after it "
                         f"was saved ({kept}). {fix}")


class NonFiniteLossError(TrainingStoppedError):
    """The loss became NaN or Inf; ``stage``, ``step`` (first bad step) and the last good checkpoint."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory):
        super().__init__(
            stage, step, last_good_step, directory, "the loss became NaN or Inf",
            "Lower config.optimizer.learning_rate (or add warm-up), check the input data, or resume from "
            "the checkpoint with a changed config in a new --workdir.")


class DivergenceError(TrainingStoppedError):
    """The loss or the parameter norm ran away (`pcam_jax.training.guards`) without a NaN."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory, reason: str):
        self.reason = reason
        super().__init__(
            stage, step, last_good_step, directory, f"training diverged ({reason})",
            "Lower config.optimizer.learning_rate (or add warm-up), or loosen the guard "
            "(config.train.divergence_loss_factor / divergence_norm_growth; 0 turns a check off).")


class DeadTrainingError(TrainingStoppedError):
    """Every gradient was exactly 0 for a run of steps: a saturated output the loss cannot leave
    (`pcam_jax.training.guards.DeadGradientGuard`); training on would only waste the stage."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory, reason: str):
        self.reason = reason
        super().__init__(
            stage, step, last_good_step, directory, f"training stopped learning ({reason})",
            "Start the stage again in a new --workdir with a lower config.optimizer.learning_rate, "
            "config.optimizer.warmup_steps, or another config.seed; config.train.dead_gradient_steps=0 "
            "turns the check off.")


class DeadDecoderError(DeadTrainingError):
    """The lesion decoder saturated at 0 on every labelled pixel (`guards.DeadDecoderGuard`): L3 can no
    longer teach it, while the classifier trains on; the stage would end with a blank lesion map."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory, reason: str):
        self.reason = reason
        TrainingStoppedError.__init__(
            self, stage, step, last_good_step, directory, f"the lesion decoder died ({reason})",
            "Start the stage again in a new --workdir with config.stage3.lesion_loss=balanced_bce (its "
            "gradient does not vanish at 0), config.stage3.hard_background=0, or a lower "
            "config.optimizer.learning_rate; config.train.dead_gradient_steps=0 turns the check off.")


class Interrupted(Exception):
    """SIGTERM/SIGINT stopped training after a step; a checkpoint of that step was written."""

    def __init__(self, stage: int, step: int, directory, signal_name: str):
        self.stage, self.step, self.directory = stage, step, directory
        super().__init__(f"{signal_name}: stopped at step {step} of stage {stage}, checkpoint saved in "
                         f"{directory}; re-run the same command to resume")


class CheckpointError(ValueError):
    """A checkpoint is missing or cannot be used; the message says which and what to do."""


class ConfigMismatchError(CheckpointError):
    """The config of a checkpoint and the current config differ in fields that matter."""


class StorageError(OSError):
    """Writing or reading the work directory failed for a reason of the machine (disk full,
    quota, read-only, permissions); the message names the path, the cause and the fix."""


def describe_os_error(error: OSError, doing: str = "") -> str:
    """One line for an environment OSError: what failed, where, and what to do."""
    where = f" {error.filename}" if getattr(error, "filename", None) else ""
    cause = error.strerror or str(error)
    fix = {errno.ENOSPC: "free disk space (or point --workdir at a larger disk)",
           errno.EDQUOT: "free space within your quota (or point --workdir elsewhere)",
           errno.EROFS: "point --workdir at a writable file system"}.get(
        error.errno, "fix the permissions (or point --workdir at a directory you may write)")
    return f"{cause}{' while ' + doing if doing else ''}{':' if where else ''}{where}; {fix}, then re-run the same command"


# (exception class, exit status), first match wins: subclasses before their bases.
EXIT_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (TrainingStoppedError, EXIT_TRAINING_STOPPED),   # NaN/Inf loss, divergence
    (Interrupted, EXIT_INTERRUPTED),
    (StorageError, EXIT_ENVIRONMENT),
    (CheckpointError, EXIT_BAD_INPUT),
    (FileNotFoundError, EXIT_BAD_INPUT),
    (NotADirectoryError, EXIT_BAD_INPUT),
    (ValueError, EXIT_BAD_INPUT),   # bad arguments, config fields and data, named in the message
)


def environment_cause(error: BaseException) -> OSError | None:
    """The disk-full / permission OSError behind ``error`` (itself or a cause), if any.

    Orbax and TensorFlow wrap the OSError of a failed write in their own exceptions, and
    TensorStore raises a ValueError that only names it (``RESOURCE_EXHAUSTED: ... No space
    left on device [os_error_code='28']``): that one is returned as the OSError it names."""
    seen = 0
    while error is not None and seen < 16:
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            return error
        if not isinstance(error, OSError):
            text = str(error)
            for number in ENVIRONMENT_ERRNOS:
                if os.strerror(number) in text or f"os_error_code='{number}'" in text:
                    return OSError(number, os.strerror(number))
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def exit_status(error: BaseException) -> int | None:
    """The exit status of a known error; None for anything else (a bug: let it raise)."""
    for cls, status in EXIT_STATUSES:
        if isinstance(error, cls):
            return status
    if environment_cause(error) is not None:
        return EXIT_ENVIRONMENT
    return None


def one_line(error: BaseException) -> str:
    """The message a command prints for a known ``error``."""
    cause = environment_cause(error) if not isinstance(error, StorageError) else None
    return describe_os_error(cause) if cause is not None else str(error)
