"""Guards of the training loop: divergence without a NaN, and a stop requested by a signal.

`DivergenceGuard` watches the per-step losses the loop already fetches at each logging
interval, and the parameter norm there. A run diverges when

- a step's loss exceeds ``loss_factor`` times its reference: the larger of the median of the
  last ``window`` step losses and the median of the first ``window`` losses of this run (so a
  loss that fell to 0.01 may still spike to 10x that without stopping anything; with the
  defaults, a cross-entropy run starting near ln 2 stops above 69), or
- the global parameter norm exceeds ``norm_growth`` times its value when the stage (or its
  resumption) started.

Both checks are off at 0. The defaults (``config.train.divergence_*``: 100x, 50 steps, 1000x)
leave a healthy run a wide margin: in a demo run (work/demo, 3 x 150 steps) the logged loss
never exceeded 1.02x its reference and the final parameter norm was 1.01-1.03x the initial
one. A runaway learning rate passes both within a few steps (lr 1e3: losses of 1e5, weights
of 1e17, all finite).

`DeadGradientGuard` watches the gradient norm at the same points: a stage whose every gradient
is exactly 0 for ``steps`` consecutive steps has stopped learning for good (measured: a FracAtlas
segmenter, stage 4 from scratch, whose sigmoid saturated at 0 in its first 40 steps and whose
balanced-MSE loss then sat at 0.5 with a zero gradient to the end; docs/RESULTS.md section 6).

`DeadDecoderGuard` watches the decoder's largest output on each step's labelled rows (stages with
L3): a decoder below ``floor`` on every labelled pixel for ``steps`` consecutive steps has saturated
at 0, where the balanced MSE's gradient ``2 (D - M) D (1 - D)`` vanishes; the classifier's losses
keep the gradient alive, so `DeadGradientGuard` cannot see it (measured: the acquisition study's
small synthetic preset with ``hard_background=0.01``, decoder output at most 1.6e-15 on test
images after its 80 steps, L3 fixed at 0.25 from step 20; docs/RESULTS.md section 7).

`StopOnSignals` turns the first SIGTERM/SIGINT into a request the loop reads between steps
(`stop_requested`): it finishes the step in flight, saves a checkpoint and raises
`pcam_jax.errors.Interrupted`. A second signal ends the process at once with the signal's
default action. Handlers are installed only by the commands (`pcam_jax.cli.train`) and
restored on exit.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
from typing import Iterable

import numpy as np


class DivergenceGuard:
    """``update(step, loss) -> reason | None`` for each step; ``check_norm(norm) -> reason | None``."""

    def __init__(self, loss_factor: float = 100.0, window: int = 50, norm_growth: float = 1000.0,
                 min_steps: int = 2):
        self.loss_factor, self.norm_growth = float(loss_factor), float(norm_growth)
        self.window, self.min_steps = max(int(window), 1), max(int(min_steps), 1)
        self._recent = collections.deque(maxlen=self.window)
        self._first: list[float] = []
        self._start_norm: float | None = None

    @classmethod
    def from_config(cls, train_config) -> "DivergenceGuard":
        return cls(loss_factor=train_config.divergence_loss_factor, window=train_config.divergence_window,
                   norm_growth=train_config.divergence_norm_growth)

    def reference_loss(self) -> float | None:
        """The loss a step is compared with; None until ``min_steps`` losses were seen."""
        if len(self._recent) < self.min_steps:
            return None
        return max(float(np.median(self._recent)), float(np.median(self._first)))

    def update(self, step: int, loss: float) -> str | None:
        reference = self.reference_loss()
        if (self.loss_factor > 0 and reference is not None and reference > 0
                and loss > self.loss_factor * reference):
            return (f"loss {loss:.4g} is over {self.loss_factor:g}x the running median "
                    f"{reference:.4g}")
        self._recent.append(float(loss))
        if len(self._first) < self.window:
            self._first.append(float(loss))
        return None

    def check_norm(self, norm: float) -> str | None:
        """The first call sets the reference norm (the stage's starting parameters)."""
        if self._start_norm is None:
            self._start_norm = float(norm)
            return None
        if self.norm_growth > 0 and self._start_norm > 0 and not norm <= self.norm_growth * self._start_norm:
            return (f"parameter norm {norm:.4g} is over {self.norm_growth:g}x its start {self._start_norm:.4g}")
        return None


class _DeadRun:
    """``update(step, value) -> reason | None``: a reason once ``steps`` consecutive values were dead
    (`_dead`; off at ``steps`` = 0). The two guards below differ only in what "dead" means."""

    def __init__(self, steps: int = 20):
        self.steps, self._run = max(int(steps), 0), 0

    def _dead(self, value: float) -> bool:
        raise NotImplementedError

    def _reason(self, run: int, step: int) -> str:
        raise NotImplementedError

    def update(self, step: int, value: float) -> str | None:
        self._run = self._run + 1 if self._dead(value) else 0
        return self._reason(self._run, step) if self.steps and self._run >= self.steps else None


class DeadGradientGuard(_DeadRun):
    """A reason once ``steps`` consecutive steps had a gradient norm of exactly 0."""

    def _dead(self, grad_norm: float) -> bool:
        return grad_norm == 0.0

    def _reason(self, run: int, step: int) -> str:
        return f"the gradient norm was exactly 0 for the {run} steps to step {step}"


class DeadDecoderGuard(_DeadRun):
    """A reason once ``steps`` consecutive steps had every labelled decoder output below ``floor``."""

    def __init__(self, steps: int = 20, floor: float = 1e-3):
        super().__init__(steps)
        self.floor = float(floor)

    def _dead(self, decoder_max: float) -> bool:
        return decoder_max < self.floor

    def _reason(self, run: int, step: int) -> str:
        return f"the lesion decoder's output stayed below {self.floor:g} on every labelled pixel for the {run} steps to step {step}"


class StopOnSignals:
    """Context manager: the first of ``signals`` asks training to stop after the step in flight
    (`stop_requested` becomes true); a second one ends the process at once. Restores the
    previous handlers on exit. Main thread only (Python's rule for signal handlers)."""

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous = {}

    def stop_requested(self) -> bool:
        return self.received is not None

    __call__ = stop_requested   # the loop's ``should_stop``

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum, frame):
        if self.received is not None:  # the second signal: now, with the signal's own default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        print(f"\npcam-jax: {signal.Signals(signum).name}: finishing the step in flight and saving a "
              "checkpoint (send it again to stop at once, without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnSignals":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
