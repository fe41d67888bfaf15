"""The sections of ``pcam-jax evaluate`` as data (big_vision's evaluators): each one a name, a
condition on what was collected, and a function that adds its metrics, figures and report
section. ``config.eval.evaluators`` names which run, in order; `pcam_jax.evaluation.evaluate`
collects the test split once and hands every evaluator the same `Evaluation`.

    classification   accuracy, AUROC, sensitivity, specificity, kappa per stage (per study and
                     per body part where the data has them); the confusion matrix
    localisation     every map against the test lesion masks (thresholds chosen on held-out
                     labelled images), per body part, PR curves, Figure 2
    trust            faithfulness and sanity of the maps (`pcam_jax.evaluation.trust`)
    shortcuts        what each classifier relies on, on counterfactual synthetic renders
    operating_point  real data: the metrics at each stage's threshold chosen on model_selection
    hardware         real data with a hardware flag: AUROC without it, P(abnormal) of normals with it
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import numpy as np

from pcam_jax import maps as maps_lib
from pcam_jax.evaluation import by_body_part, figures, real_data, shortcuts, trust
from pcam_jax.evaluation import progress as progress_lib
from pcam_jax.metrics import classification as classification_metrics, localisation as localisation_metrics
from pcam_jax.training import stages as stages_lib

SHORTCUT_NOTE = ("Counterfactual renders of `eval.shortcut_limbs` held-out synthetic limbs, each drawn with and "
                 "without lesions and with the side marker and the hardware forced on and off "
                 "(`pcam_jax/evaluation/shortcuts.py`). Lesion AUROC compares a limb's lesion and lesion-free "
                 "versions within the same confounder cell (0.5: the lesion plays no part); a confounder's "
                 "effect is the mean change of P(abnormal) when only it is switched on, on normal limbs, and "
                 "its AUROC on vs off; the arg-max shares say where the map's peak lands (masks grown by the "
                 "pointing-game tolerance).")
TRUST_NOTE = ("Faithfulness on the first `eval.trust_images` test images with a lesion, every map for the "
              "abnormal class: deletion (pixels set to 0 most relevant first) and insertion (pixels restored "
              "on a blurred image) AUCs of P(abnormal), ROAD with noisy linear imputation, average drop / "
              "increase of P(abnormal) on the image times the map (Chattopadhyay et al.). Sanity "
              "(Adebayo et al.): mean SSIM of the map to the trained model's once the head and every "
              "encoder block are re-initialised (pass: < 0.5), and of the other class's map to this one's.")


@dataclasses.dataclass
class Evaluation:
    """What the evaluators share: the runs, the collected splits, and what they write."""

    runs: dict[int, Any]                     # {stage: `pcam_jax.run.analysis.Run`}
    config: Any
    test: dict                               # the collected test split (`evaluate._collect`)
    held: dict | None                        # the collected images that choose thresholds
    threshold_source: str | None
    methods: dict[int, tuple[str, ...]]      # {stage: map methods scored}
    out_dir: pathlib.Path
    metrics: dict = dataclasses.field(default_factory=dict)
    sections: list = dataclasses.field(default_factory=list)   # (title, markdown) for report.md
    progress: Any = None                     # `pcam_jax.evaluation.progress.Sections`: bars and seconds

    def __post_init__(self):
        if self.progress is None:
            self.progress = progress_lib.Sections(show=False)

    def save_figure(self, name: str, figure, dpi: int = 110) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.out_dir / f"{name}.png", dpi=dpi, bbox_inches="tight")
        self.metrics.setdefault("figures", {})[name] = f"{name}.png"

    @property
    def tolerance(self) -> float:
        return localisation_metrics.pointing_tolerance(int(self.config.data.image_size),
                                                       self.config.eval.pointing_tolerance)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    name: str
    applies: Callable[[Evaluation], bool]
    run: Callable[[Evaluation], None]
    own_progress: bool = False   # shows its own named bars (``ev.progress``); else one bar for it


def figure2_columns(stage_methods: dict[int, tuple[str, ...]]) -> dict[str, str]:
    """{"stageN/method": column title} of Figure 2 (the paper's, done properly: image, mask, then
    maps): each stage's own map under its `Stage.figure_title`, or, for stage 1, every Figure-2
    map of the registry under its own title."""
    columns = {}
    for stage, methods in stage_methods.items():
        title = stages_lib.get(stage).figure_title
        if title is None:
            columns.update({f"stage{stage}/{m}": maps_lib.registry.title(m) for m in methods
                            if maps_lib.registry.get(m).in_figure2})
        elif methods:
            columns[f"stage{stage}/{methods[0]}"] = title
    return columns


def classification(ev: Evaluation) -> None:
    test, result = ev.test, {}
    for stage, probs in test["probs"].items():
        entry = {"image": classification_metrics.classification_metrics(probs, test["labels"])}
        studies = test["study_id"].astype(str)
        if len(np.unique(studies)) < len(studies):  # MURA: several images per study
            entry["study"] = classification_metrics.study_metrics(probs, studies, test["labels"])
        groups = test["body_part"].astype(str)
        if len(np.unique(groups)) > 1:
            entry["per_group"] = classification_metrics.per_group_metrics(probs, test["labels"], groups, studies)
        result[f"stage{stage}"] = entry
    ev.metrics["classification"] = result


def confusion_matrix(ev: Evaluation) -> None:
    """The last stage's confusion matrix at 0.5."""
    last = max(ev.test["probs"])
    predictions = (ev.test["probs"][last] > 0.5).astype(np.int32)
    ev.save_figure("confusion_matrix", figures.confusion_matrix_figure(ev.test["labels"], predictions))


def localisation(ev: Evaluation) -> None:
    with ev.progress.section("localisation metrics", total=len(ev.test["maps"]), unit="map") as bar:
        loc, curves, box_ious = _localisation_metrics(ev, bar)
    test = ev.test
    ev.metrics["localisation"] = loc
    with ev.progress.section("localisation figures", total=1, unit="section") as bar:
        if len(np.unique(test["mask_body_part"])) > 1:  # MURA, folders: localisation per body part
            ev.metrics["localisation_per_group"] = by_body_part.localisation_per_group(
                test["maps"], test["masks"], test["mask_body_part"], {n: loc[n]["tau"] for n in loc},
                ev.tolerance, box_ious=box_ious)
        ev.save_figure("pr_curves", figures.pr_curves(curves))
        rows = np.arange(min(len(test["images"]), int(ev.config.eval.num_figure_images)))
        if len(rows):
            columns = {title: test["maps"][name][rows] for name, title in figure2_columns(ev.methods).items()
                       if name in test["maps"]}
            ev.save_figure("figure2", figures.figure2(test["images"][rows], test["masks"][rows], columns))
        bar.update()


def _localisation_metrics(ev: Evaluation, bar) -> tuple[dict, dict, dict]:
    """({map: localisation metrics}, {map: (precision, recall)}, {map: MaxBoxAccV2's best box IoU
    per image and threshold (N, T)}); thresholds chosen on ``ev.held``. The PR curve and the box
    IoUs are computed once, for the metrics, the PR figure and the per-body-part tables.

    One map method per thread: the metrics are numpy and scipy work on one core each (MaxBoxAccV2's
    boxes of 100 thresholds per image, `boxes.wsolevaluation_boxes_all_thresholds`), and the
    methods are independent, so the results are those of the loop in any order."""
    import concurrent.futures
    import os

    test, held = ev.test, ev.held

    def one(name):
        maps = test["maps"][name]
        if held is not None and held["masks"].any():
            tau = localisation_metrics.choose_threshold(held["maps"][name], held["masks"])
            tau_source = ev.threshold_source
        else:
            tau, tau_source = 0.5, "default (no held-out labelled split)"
        precision, recall, _ = localisation_metrics.pixel_precision_recall(maps, test["masks"])
        box_ious = localisation_metrics.best_box_iou(maps, test["masks"])
        entry = localisation_metrics.localisation_metrics(maps, test["masks"], tau=tau, tolerance=ev.tolerance,
                                                          box_ious=box_ious, pr_curve=(precision, recall))
        entry["n_excluded"] += test["n_empty_masks"]
        entry["tau_chosen_on"] = tau_source
        return entry, (precision, recall), box_ious

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {name: pool.submit(one, name) for name in test["maps"]}
        for _ in concurrent.futures.as_completed(futures.values()):
            bar.update()
    results = {name: future.result() for name, future in futures.items()}  # in the maps' order
    return tuple({n: r[i] for n, r in results.items()} for i in range(3))


def trust_section(ev: Evaluation) -> None:
    """Faithfulness and sanity figures of every stage's maps, and the randomisation figure."""
    result = trust.trust_report(ev.runs, ev.test, ev.methods, ev.config, ev.progress)
    cascade = result.pop("_cascade", None)
    ev.metrics["trust"] = result
    if cascade:
        method = "positive_cam" if "positive_cam" in cascade["maps"] else next(iter(cascade["maps"]))
        ev.save_figure("randomisation_cascade", figures.cascade_figure(
            cascade["images"], cascade["maps"][method], cascade["steps"], method=f"stage{cascade['stage']} {method}"),
            dpi=90)
    if result:
        ev.sections.append(("Are the maps faithful and sane?", trust.trust_table(result) + "\n\n" + TRUST_NOTE))


def shortcut_section(ev: Evaluation) -> None:
    """{stage name: `shortcuts.shortcut_report`} on the same counterfactual renders (synthetic only)."""
    with ev.progress.section("shortcuts: counterfactual renders", total=1, unit="section") as bar:
        rendered = shortcuts.render_counterfactuals(ev.config.synthetic, int(ev.config.eval.shortcut_limbs))
        bar.update()
    out = {}
    with ev.progress.section("shortcuts: probabilities and map peaks", total=len(ev.runs), unit="stage") as bar:
        for stage, run in ev.runs.items():
            # Cheap maps only (Figure 2's: one forward, at most one VJP): Score-CAM and AblationCAM on
            # 8 x shortcut_limbs renders would cost more than the rest of the evaluation.
            methods = tuple(m for m in maps_lib.FIGURE2_METHODS if m in ev.methods[stage])
            maps_fn = lambda x, run=run, methods=methods: {m: run.maps(x, method=m) for m in methods}
            out[f"stage{stage}"] = shortcuts.shortcut_report(run.predict, maps_fn, ev.config.synthetic,
                                                             tolerance=ev.tolerance, rendered=rendered)
            bar.update()
    ev.metrics["shortcuts"] = out
    lines = [f"- {stage}: {shortcuts.reliance_summary(r)}." for stage, r in out.items()]
    ev.sections.insert(0, ("What does the classifier rely on?", shortcuts.shortcut_table(out)
                           + "\n\n" + SHORTCUT_NOTE + "\n\n" + "\n".join(lines)))


def _has_lesions(ev: Evaluation) -> bool:
    return len(ev.test["masks"]) > 0   # the collection keeps only images with a lesion


EVALUATORS: dict[str, Evaluator] = {e.name: e for e in (
    Evaluator("classification", lambda ev: True, classification),
    Evaluator("localisation", _has_lesions, localisation, own_progress=True),
    Evaluator("trust", lambda ev: _has_lesions(ev) and int(ev.config.eval.trust_images) > 0, trust_section,
              own_progress=True),
    Evaluator("shortcuts", lambda ev: ev.config.data.dataset == "synthetic" and int(ev.config.eval.shortcut_limbs) > 0,
              shortcut_section, own_progress=True),
    Evaluator("operating_point", lambda ev: bool(ev.metrics.get("model_selection_thresholds")),
              real_data.operating_point_section),
    Evaluator("hardware", real_data.has_hardware, real_data.hardware_section),
    Evaluator("confusion_matrix", lambda ev: True, confusion_matrix),
)}


def chosen(config) -> list[Evaluator]:
    """The evaluators ``config.eval.evaluators`` names, in its order (clear error on a wrong name)."""
    names = [n.strip() for n in str(config.eval.evaluators).split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.eval.evaluators: unknown {unknown}; choose from {', '.join(EVALUATORS)}")
    return [EVALUATORS[n] for n in names]
