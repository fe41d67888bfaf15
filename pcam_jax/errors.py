"""The project's known failures: exception classes every module raises, and their exit statuses.

Each is an error a user can act on, and its message says what is wrong and the fix. The
commands (`pcam_jax.cli`) turn them into one line on stderr and the exit status below; a
library user catches them like any exception. Importing this module costs nothing (no JAX).

    status  meaning
    0       done
    1       training stopped: the loss became NaN/Inf (the last good checkpoint is kept)
    2       bad input: arguments, config, data, or a checkpoint that is missing, damaged or
            was written with a different config
"""

from __future__ import annotations

EXIT_OK, EXIT_TRAINING_STOPPED, EXIT_BAD_INPUT = 0, 1, 2


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; ``stage``, ``step`` (first bad step) and the last good checkpoint."""

    def __init__(self, stage: int, step: int, last_good_step: int | None, directory):
        self.stage, self.step, self.last_good_step = stage, step, last_good_step
        kept = (f"the last good checkpoint, step {last_good_step}, is kept in {directory}"
                if last_good_step is not None else "no checkpoint of this stage had been saved")
        super().__init__(
            f"stage {stage}: the loss became NaN or Inf at step {step}; training stopped and nothing "
            f"after it was saved ({kept}). Lower config.optimizer.learning_rate (or add warm-up), "
            f"check the input data, or resume from the checkpoint with a changed config in a new --workdir.")


class CheckpointError(ValueError):
    """A checkpoint is missing or cannot be used; the message says which and what to do."""


class ConfigMismatchError(CheckpointError):
    """The config of a checkpoint and the current config differ in fields that matter."""


# (exception class, exit status), first match wins: subclasses before their bases.
EXIT_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (NonFiniteLossError, EXIT_TRAINING_STOPPED),
    (CheckpointError, EXIT_BAD_INPUT),
    (FileNotFoundError, EXIT_BAD_INPUT),
    (NotADirectoryError, EXIT_BAD_INPUT),
    (ValueError, EXIT_BAD_INPUT),   # bad arguments, config fields and data, named in the message
)


def exit_status(error: BaseException) -> int | None:
    """The exit status of a known error; None for anything else (a bug: let it raise)."""
    for cls, status in EXIT_STATUSES:
        if isinstance(error, cls):
            return status
    return None
