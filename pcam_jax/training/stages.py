"""The three stages as data: one table of everything that differs between them.

Every other module asks a `Stage` what to do (which losses, what to start from, what to
freeze, which batches, which maps to score) instead of branching on the stage number, so a
new stage (say, a segmenter trained on the labelled few alone) is one entry here plus its
loss term in `pcam_jax.training.steps`. The method behind each entry: docs/METHOD.md.

    stage  loss                                    starts from            frozen    labelled  scored maps
    1      L1                                      scratch                decoder   no        cam, positive_cam, grad_cam, ...
    2      (1 - lam) L1 + lam L2                   scratch | stage 1      decoder   no        positive_cam
    3      (1 - lam) L1 + lam L2 + lam' L3         stage 2 (enc + head)   -         yes       decoder, positive_cam
    4      lam' L3 (the few-label segmenter)       scratch                head      yes       decoder

"Best" checkpoint: stages 1-3 by ``train.best_metric`` on model_selection; stage 4 by its decoder's
PxAP on the held-out lesion masks (`Stage.best_by_localisation`), and stage 3 too where
``stage3.select_by="localisation"`` (`Stage.ranked_by_localisation`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from pcam_jax import maps

LOSS_TERMS = ("l1", "l2", "l3")   # plain-pass cross-entropy, masked-pass attention loss, lesion loss
SELECT_BY = ("classification", "localisation")   # the values of a stage's `Stage.selection_option`


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one stage trains and how it is evaluated.

    Attributes:
      number: 1, 2, 3; its settings are ``config[f"stage{number}"]`` (see `settings`).
      losses: the loss terms of `LOSS_TERMS` it optimises. With ``("l1",)`` alone the loss is
        L1 (no confidence mixing), with ``("l3",)`` alone ``lambda' L3``; otherwise
        ``(1 - lambda) L1 + lambda L2 + lambda' L3``.
      class_weighted_l1: L1 takes inverse-frequency class weights when the stage's config
        section says ``class_weighted`` (the MURA baseline's loss).
      frozen_parts: parts of ``params`` whose updates are zeroed (parts without a loss).
      starts_from: the stage whose best checkpoint this one starts from (None: from scratch).
      init_option: a field of the stage's config section that overrides ``starts_from``:
        ``"scratch"`` or ``"stageN"`` (stage 2's ``init_from``: the paper retrains from scratch).
      carried_parts: parts taken from the source stage's checkpoint (the rest is fresh).
      needs_labelled: each step also draws a batch of the lesion-labelled few.
      map_methods: the maps `pcam-jax evaluate` scores for this stage (names of
        `pcam_jax.maps.registry`); the first is the stage's own.
      figure_title: the column title of the stage's own map in Figure 2; None (stage 1): every
        Figure-2 map of the registry, each under its own title.
      also_compared: other stages whose config sections must match when resuming (stage 3
        optimises stage 2's loss, so stage 2's settings matter to it; its schedule does not).
      best_by_localisation: its "best" checkpoint is the one whose decoder map scores the highest
        PxAP on the run's held-out lesion masks (its latest where the run has none), not the one
        with the best ``train.best_metric`` on model_selection: a stage whose classification head
        never trains (stage 4) cannot earn a classification metric
        (`pcam_jax.training.selection.criterion`).
      selection_option: a field of the stage's config section (one of `SELECT_BY`) by which a
        stage that trains both a classifier and a decoder is ranked like stage 4 instead
        (``"localisation"``): its decoder map is what the stage is for.
    """

    number: int
    losses: tuple[str, ...]
    class_weighted_l1: bool = False
    frozen_parts: tuple[str, ...] = ("decoder",)
    starts_from: int | None = None
    init_option: str | None = None
    carried_parts: tuple[str, ...] = ("encoder", "head")
    needs_labelled: bool = False
    map_methods: tuple[str, ...] = ("positive_cam",)
    figure_title: str | None = None
    also_compared: tuple[int, ...] = ()
    best_by_localisation: bool = False
    selection_option: str | None = None

    @property
    def name(self) -> str:
        return f"stage{self.number}"

    @property
    def trains_decoder(self) -> bool:
        """The decoder has a loss (and is trained) in this stage; its map means something."""
        return "decoder" not in self.frozen_parts

    def settings(self, config: Any):
        """This stage's config section, e.g. ``config.stage2``."""
        return config[self.name]

    def source(self, config: Any) -> int | None:
        """The stage whose best checkpoint this one starts from; None for a fresh start."""
        if self.init_option is None:
            return self.starts_from
        choice = str(self.settings(config)[self.init_option])
        choices = ("scratch",) + tuple(f"stage{n}" for n in STAGES if n < self.number)
        if choice not in choices:
            raise ValueError(f"config.{self.name}.{self.init_option} must be one of {choices}, got {choice!r}")
        return None if choice == "scratch" else int(choice[len("stage"):])

    def ranked_by_localisation(self, config: Any) -> bool:
        """Its "best" checkpoint is chosen on held-out decoder PxAP (`best_by_localisation`, or
        its config's `selection_option` says ``"localisation"``), not on ``train.best_metric``."""
        if self.best_by_localisation or self.selection_option is None:
            return self.best_by_localisation
        choice = str(self.settings(config)[self.selection_option])
        if choice not in SELECT_BY:
            raise ValueError(f"config.{self.name}.{self.selection_option} must be one of {SELECT_BY}, got {choice!r}")
        return choice == "localisation"

    def uses(self, term: str) -> bool:
        return term in self.losses


STAGES: dict[int, Stage] = {
    1: Stage(1, losses=("l1",), class_weighted_l1=True, map_methods=maps.CAM_METHODS),
    2: Stage(2, losses=("l1", "l2"), init_option="init_from", figure_title="stage 2"),
    3: Stage(3, losses=("l1", "l2", "l3"), frozen_parts=(), starts_from=2, needs_labelled=True,
             map_methods=(maps.DECODER, "positive_cam"), figure_title="stage 3", also_compared=(2,),
             selection_option="select_by"),
    # The fair baseline (Choe et al.): encoder + decoder trained on the labelled few alone, from
    # scratch, with stage 3's lesion loss; never trained by default (`--stages 4`).
    4: Stage(4, losses=("l3",), frozen_parts=("head",), needs_labelled=True,
             map_methods=(maps.DECODER,), figure_title="few-label segmenter", also_compared=(3,),
             best_by_localisation=True),
}
NUMBERS = tuple(STAGES)
DEFAULT = (1, 2, 3)  # the paper's three stages: what `pcam-jax train` and the demo run


def get(number: int) -> Stage:
    """The `Stage` numbered ``number``, with a clear error for anything else."""
    if number not in STAGES:
        raise ValueError(f"stage must be one of {NUMBERS}, got {number!r}")
    return STAGES[number]


def parse(stages: str | Iterable[int]) -> tuple[int, ...]:
    """``"1,2,3"`` or ``(2, 3)`` -> sorted unique stage numbers, with a clear error for anything else."""
    items = str(stages).replace(" ", "").split(",") if isinstance(stages, str) else list(stages)
    try:
        parsed = sorted({int(s) for s in items if str(s) != ""})
    except ValueError:
        parsed = []
    if not parsed or any(s not in STAGES for s in parsed):
        raise ValueError(f"stages must be a comma-separated subset of {','.join(map(str, NUMBERS))} "
                         f"(e.g. --stages 1,2,3), got {stages!r}")
    return tuple(parsed)
