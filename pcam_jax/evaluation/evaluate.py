"""Score every map method of a trained run on the test split, from its checkpoints alone.

`evaluate_workdir(workdir)` restores each trained stage (config from the checkpoint), runs
the test split once, and writes to ``<workdir>/eval/``: metrics.json, report.md,
figure2.png, pr_curves.png and confusion_matrix.png. Map methods scored per stage are the
stage's ``map_methods`` (`pcam_jax.training.stages`):

    stage1/{cam, positive_cam, grad_cam, grad_cam_pp, layer_cam, score_cam}
    stage2/positive_cam            (the learnt attention map)
    stage3/decoder, stage3/positive_cam

Every map is made for the abnormal class, post-processed like pytorch-grad-cam (ReLU,
per-image min-max, resize to the image) and compared with the lesion masks of test images
that have one; IoU/Dice thresholds are chosen per method on the held-out labelled split,
never on the test split.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from pcam_jax.run import analysis
from pcam_jax import maps as maps_lib
from pcam_jax.data import resolve_data_dir
from pcam_jax.evaluation import by_body_part, figures, report, shortcuts, trust
from pcam_jax.metrics import classification, localisation
from pcam_jax.training import checkpointing, stages as stages_lib



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
TEST_SPLIT = {"synthetic": "test", "mura": "valid"}
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
THRESHOLD_SPLIT = {"synthetic": "heldout_labelled"}


def _collect(runs: dict[int, analysis.Run], config, split: str, data_dir, *,
             figure_rows: int = 0, records=None, methods: dict[int, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """One pass over a split (or over ``records``): probabilities per stage and post-processed
    maps per method.

    Maps are computed only for rows with a non-empty lesion mask; images with an empty
    mask (normal ones) are only counted (``n_empty_masks``), since no map can be scored there.
    ``methods``: {stage: map methods}, default every stage's ``map_methods``.
    """
    from pcam_jax.data import pipeline

    methods = methods or {s: stages_lib.get(s).map_methods for s in runs}

    if records is None:
        records = pipeline.load_records(config, split, data_dir)
    size = int(config.data.image_size)
    out = {"probs": {s: [] for s in runs}, "labels": [], "study_id": [], "body_part": [],
           "maps": {f"stage{s}/{m}": [] for s in runs for m in methods[s]},
           "masks": [], "mask_body_part": [], "images": [], "n_empty_masks": 0}
    for batch in pipeline.eval_batches(config, records):
        valid = batch["valid"]
        lesion = batch["mask"].reshape(len(valid), -1).any(axis=1)
        keep = valid & batch["has_mask"] & lesion
        out["n_empty_masks"] += int((valid & batch["has_mask"] & ~lesion).sum())
        out["labels"].append(batch["label"][valid])
        out["study_id"].append(batch["study_id"][valid])
        out["body_part"].append(batch["body_part"][valid])
        for stage, run in runs.items():
            out["probs"][stage].append(run.predict(batch["image"][valid]))
        if not keep.any():
            continue
        images = batch["image"][keep]
        for stage, run in runs.items():
            for method, raw in run.raw_maps(images, methods[stage]).items():
                out["maps"][f"stage{stage}/{method}"].append(
                    np.asarray(maps_lib.postprocess(jnp.asarray(raw), size, size), np.float32))
        out["masks"].append(batch["mask"][keep].astype(np.uint8))
        out["mask_body_part"].append(batch["body_part"][keep])
        if sum(len(x) for x in out["images"]) < figure_rows:
            out["images"].append(images[..., 0])
    cat = lambda xs, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape)
    return {
        "probs": {s: cat(v) for s, v in out["probs"].items()},
        "labels": cat(out["labels"]).astype(np.int32),
        "study_id": cat(out["study_id"]), "body_part": cat(out["body_part"]),
        "maps": {k: cat(v, (0, size, size)) for k, v in out["maps"].items()},
        "masks": cat(out["masks"], (0, size, size)), "mask_body_part": cat(out["mask_body_part"]),
        "images": cat(out["images"], (0, size, size)),
        "n_empty_masks": out["n_empty_masks"],
    }


def _labelled_splits(runs, config, split: str, data_dir, figure_rows: int, methods=None):
    """``(test, held, tau_source)``: the collected test split and the collected images that
    choose thresholds (None where there are none).

    With ``config.eval.lesion_labels`` (real data), the test records carry those clinician
    masks and a held-out share of their patients chooses the thresholds
    (`pcam_jax.data.clinician_labels`); otherwise the dataset's own masks and its
    ``THRESHOLD_SPLIT`` (synthetic: heldout_labelled).
    """
    from pcam_jax.data import clinician_labels, pipeline

    clinician_labels.check_config(config)  # the two label sets share no image
    if clinician_labels.parse_sources(config.eval.lesion_labels):
        scored, held = clinician_labels.evaluation_records(
            config, pipeline.load_records(config, split, data_dir), split)
        test = _collect(runs, config, split, data_dir, figure_rows=figure_rows, records=scored, methods=methods)
        held = _collect(runs, config, split, data_dir, records=held, methods=methods) if held is not None else None
        return test, held, "held-out share of config.eval.lesion_labels"
    test = _collect(runs, config, split, data_dir, figure_rows=figure_rows, methods=methods)
    threshold_split = THRESHOLD_SPLIT.get(config.data.dataset)
    held = _collect(runs, config, threshold_split, data_dir, methods=methods) if threshold_split else None
    return test, held, threshold_split


def _classification(test: dict, config) -> dict:
    result = {}
    for stage, probs in test["probs"].items():
        entry = {"image": classification.classification_metrics(probs, test["labels"])}
        studies = test["study_id"].astype(str)
        if len(np.unique(studies)) < len(studies):  # MURA: several images per study
            entry["study"] = classification.study_metrics(probs, studies, test["labels"])
        groups = test["body_part"].astype(str)
        if len(np.unique(groups)) > 1:
            entry["per_group"] = classification.per_group_metrics(probs, test["labels"], groups, studies)
        result[f"stage{stage}"] = entry
    return result


def _trust(metrics: dict, runs, test: dict, config, out_dir: pathlib.Path, stage_methods: dict) -> None:
    """Faithfulness and sanity figures of every stage's maps, and the randomisation figure."""
    result = trust.trust_report(runs, test, stage_methods, config)
    cascade = result.pop("_cascade", None)
    metrics["trust"] = result
    if cascade:
        method = "positive_cam" if "positive_cam" in cascade["maps"] else next(iter(cascade["maps"]))
        fig = figures.cascade_figure(cascade["images"], cascade["maps"][method], cascade["steps"],
                                     method=f"stage{cascade['stage']} {method}")
        fig.savefig(out_dir / "randomisation_cascade.png", dpi=90, bbox_inches="tight")
        metrics["figures"]["randomisation_cascade"] = "randomisation_cascade.png"


def _shortcuts(runs, config, stage_methods: dict) -> dict[str, dict]:
    """{stage name: `shortcuts.shortcut_report`} on the same counterfactual renders (synthetic only)."""
    rendered = shortcuts.render_counterfactuals(config.synthetic, int(config.eval.shortcut_limbs))
    tolerance = localisation.pointing_tolerance(int(config.data.image_size), config.eval.pointing_tolerance)
    out = {}
    for stage, run in runs.items():
        # Cheap maps only (Figure 2's: one forward, at most one VJP): Score-CAM and AblationCAM on
        # 8 x shortcut_limbs renders would cost more than the rest of the evaluation.
        methods = tuple(m for m in maps_lib.FIGURE2_METHODS if m in stage_methods[stage])
        maps_fn = lambda x, run=run, methods=methods: {m: run.maps(x, method=m) for m in methods}
        out[f"stage{stage}"] = shortcuts.shortcut_report(run.predict, maps_fn, config.synthetic,
                                                         tolerance=tolerance, rendered=rendered)
    return out


def _save_maps(path: pathlib.Path, test: dict, held: dict | None) -> None:
    """``test/<stage>/<method>`` and ``held/...`` maps (post-processed, images with a lesion),
    ``test_masks``, ``held_masks``, ``probs/<stage>`` and ``labels`` (every test image)."""
    arrays = {"labels": test["labels"], "test_masks": test["masks"],
              **{f"probs/stage{s}": p for s, p in test["probs"].items()},
              **{f"test/{name}": m for name, m in test["maps"].items()}}
    if held is not None:
        arrays.update(held_masks=held["masks"], **{f"held/{name}": m for name, m in held["maps"].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def _to_json(value):
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def evaluate_workdir(workdir, *, split: str | None = None, data_dir: str | None = None,
                     out_dir=None, which: str | int = "best", verbose: bool = True,
                     lesion_labels: str | None = None, stages=None,
                     methods: dict[int, tuple[str, ...]] | None = None, save_maps: bool = False) -> dict:
    """Evaluates every trained stage in `workdir`; writes and returns the metrics dict.

    ``lesion_labels`` overrides the run's ``config.eval.lesion_labels`` (clinician masks of
    test images, `pcam_jax.data.clinician_labels`). ``stages`` picks some of the trained stages
    (default: all); ``methods`` ({stage: map methods}) scores fewer maps than a stage's
    ``map_methods`` (e.g. stage 1's CAM and positive CAM without Score-CAM: `pcam_jax.study`).
    ``save_maps`` also writes ``maps.npz``: what the numbers are computed from (`_save_maps`), so
    anyone can recompute them."""
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir else workdir / "eval"
    trained = checkpointing.trained_stages(workdir)
    stages = trained if stages is None else [s for s in stages_lib.parse(stages) if s in trained]
    if not stages:
        raise FileNotFoundError(f"no checkpoints under {workdir / 'checkpoints'}: train first "
                                f"(`pcam-jax train --workdir {workdir}`) or point --workdir at a run")
    t0 = time.perf_counter()
    runs = {s: analysis.load(workdir, s, which) for s in stages}
    config = runs[stages[-1]].config
    if lesion_labels is not None:
        with config.unlocked():
            config.eval.lesion_labels = lesion_labels
    dataset = config.data.dataset
    data_dir = resolve_data_dir(config, data_dir)
    split = split or TEST_SPLIT.get(dataset, "test")
    for stage, run in runs.items():
        if run.config.data.image_size != config.data.image_size:
            raise checkpointing.ConfigMismatchError(
                f"stage {stage} was trained at image size {run.config.data.image_size}, stage "
                f"{stages[-1]} at {config.data.image_size}: evaluate them from separate work directories")

    n_figure = int(config.eval.num_figure_images)
    n_trust = int(config.eval.trust_images)
    methods = {s: tuple((methods or {}).get(s, stages_lib.get(s).map_methods)) for s in stages}
    test, held, threshold_split = _labelled_splits(runs, config, split, data_dir, max(n_figure, n_trust), methods)
    metrics: dict[str, Any] = {
        "split": split, "dataset": dataset, "workdir": str(workdir),
        "checkpoint_steps": {f"stage{s}": r.step for s, r in runs.items()},
        "classification": _classification(test, config),
    }

    if len(test["masks"]):  # _collect keeps only images with a lesion
        loc, curves = {}, {}
        tolerance = localisation.pointing_tolerance(int(config.data.image_size), config.eval.pointing_tolerance)
        for name, maps in test["maps"].items():
            if held is not None and held["masks"].any():
                tau = localisation.choose_threshold(held["maps"][name], held["masks"])
                tau_source = threshold_split
            else:
                tau, tau_source = 0.5, "default (no held-out labelled split)"
            loc[name] = localisation.localisation_metrics(
                maps, test["masks"], tau=tau, tolerance=tolerance)
            loc[name]["n_excluded"] += test["n_empty_masks"]
            loc[name]["tau_chosen_on"] = tau_source
            precision, recall, _ = localisation.pixel_precision_recall(maps, test["masks"])
            curves[name] = (precision, recall)
        metrics["localisation"] = loc
        if len(np.unique(test["mask_body_part"])) > 1:  # MURA, folders: localisation per body part
            metrics["localisation_per_group"] = by_body_part.localisation_per_group(
                test["maps"], test["masks"], test["mask_body_part"], {n: loc[n]["tau"] for n in loc},
                float(config.eval.pointing_tolerance))
        out_dir.mkdir(parents=True, exist_ok=True)
        figures.pr_curves(curves).savefig(out_dir / "pr_curves.png", dpi=110, bbox_inches="tight")
        metrics.setdefault("figures", {})["pr_curves"] = "pr_curves.png"

        rows = np.arange(min(len(test["images"]), n_figure))
        if len(rows):
            columns = {title: test["maps"][name][rows] for name, title in figure2_columns(methods).items()
                       if name in test["maps"]}
            fig = figures.figure2(test["images"][rows], test["masks"][rows], columns)
            fig.savefig(out_dir / "figure2.png", dpi=110, bbox_inches="tight")
            metrics["figures"]["figure2"] = "figure2.png"
        if n_trust > 0:
            _trust(metrics, runs, test, config, out_dir, methods)
    else:
        metrics["localisation"] = {}
        metrics["localisation_note"] = f"no test image of split {split!r} has a lesion mask"

    if save_maps:
        _save_maps(out_dir / "maps.npz", test, held)
    if dataset == "synthetic" and int(config.eval.shortcut_limbs) > 0:
        metrics["shortcuts"] = _shortcuts(runs, config, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = stages[-1]
    predictions = (test["probs"][last] > 0.5).astype(np.int32)
    figures.confusion_matrix_figure(test["labels"], predictions).savefig(
        out_dir / "confusion_matrix.png", dpi=110, bbox_inches="tight")
    metrics.setdefault("figures", {})["confusion_matrix"] = "confusion_matrix.png"
    metrics["config"] = config.to_dict()
    metrics["seconds"] = time.perf_counter() - t0
    (out_dir / "metrics.json").write_text(json.dumps(_to_json(metrics), indent=2))
    sections = []
    if metrics.get("shortcuts"):
        lines = [f"- {stage}: {shortcuts.reliance_summary(r)}." for stage, r in metrics["shortcuts"].items()]
        sections.append(("What does the classifier rely on?", shortcuts.shortcut_table(metrics["shortcuts"])
                         + "\n\n" + SHORTCUT_NOTE + "\n\n" + "\n".join(lines)))
    if metrics.get("trust"):
        sections.append(("Are the maps faithful and sane?", trust.trust_table(metrics["trust"]) + "\n\n" + TRUST_NOTE))
    report.write_report(out_dir / "report.md", metrics, sections=sections)
    if verbose:
        print(report.localisation_table(metrics["localisation"]) if metrics["localisation"] else
              metrics.get("localisation_note", ""))
        if metrics.get("shortcuts"):
            print()
            print(shortcuts.shortcut_table(metrics["shortcuts"]))
        print()
        print(report.classification_table(metrics["classification"]))
        print(f"\nwrote {out_dir}/metrics.json, report.md and figures ({metrics['seconds']:.0f} s)")
    return metrics
