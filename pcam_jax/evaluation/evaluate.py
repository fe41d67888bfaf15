"""Score every map method of a trained run on the test split, from its checkpoints alone.

`evaluate_workdir(workdir)` restores each trained stage (config from the checkpoint), runs
the test split once, and writes to ``<workdir>/eval/``: metrics.json, report.md,
figure2.png, pr_curves.png and confusion_matrix.png. The sections are the evaluators
``config.eval.evaluators`` names (`pcam_jax.evaluation.evaluators`). Map methods scored per stage
are the stage's ``map_methods`` (`pcam_jax.training.stages`):

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
from pcam_jax.data import HELDOUT_MASK_SPLIT, resolve_data_dir, scorable_rows
from pcam_jax.evaluation import progress, evaluators, real_data, report, shortcuts
from pcam_jax.training import checkpointing, stages as stages_lib



TEST_SPLIT = {"synthetic": "test", "mura": "valid", "fracatlas": "test"}


def _collect_batch(batch: dict, runs: dict, out: dict) -> None:
    """Adds one eval batch's labels and probabilities to `_collect`'s lists ``out``, and queues
    its images with a lesion for `_map_queued`."""
    valid = batch["valid"]
    keep = scorable_rows(batch)
    out["n_empty_masks"] += int((valid & batch["has_mask"]).sum() - keep.sum())
    out["labels"].append(batch["label"][valid])
    out["study_id"].append(batch["study_id"][valid])
    out["body_part"].append(batch["body_part"][valid])
    out["hardware"].append(batch["hardware"][valid])
    for stage, run in runs.items():
        out["probs"][stage].append(run.predict(batch["image"][valid]))
    if keep.any():
        out["queued"].append((batch["image"][keep], batch["mask"][keep].astype(np.uint8), batch["body_part"][keep]))


def _map_queued(runs: dict, methods: dict, size: int, figure_rows: int, out: dict, final: bool) -> None:
    """Maps of the queued lesion images, post-processed, appended to ``out``.

    Maps run in whole chunks of ``Run.chunk`` images: an eval batch holds only a few lesion
    images (FracAtlas: ~6 of 32), and mapping each batch's few alone padded every chunk, so
    Score-CAM's 128 forwards per image were paid up to 2.6x. Until ``final``, a remainder
    smaller than a chunk stays queued."""
    if not out["queued"]:
        return
    images, masks, parts = (np.concatenate(x) for x in zip(*out["queued"]))
    chunk = min(r.chunk for r in runs.values())
    n = len(images) if final else len(images) // chunk * chunk
    out["queued"] = [(images[n:], masks[n:], parts[n:])] if n < len(images) else []
    if n == 0:
        return
    for stage, run in runs.items():
        for method, raw in run.raw_maps(images[:n], methods[stage]).items():
            out["maps"][f"stage{stage}/{method}"].append(
                np.asarray(maps_lib.postprocess(jnp.asarray(raw), size, size), np.float32))
    out["masks"].append(masks[:n])
    out["mask_body_part"].append(parts[:n])
    if sum(len(x) for x in out["images"]) < figure_rows:
        out["images"].append(images[:n, ..., 0])


def _collect(runs: dict[int, analysis.Run], config, split: str, data_dir, *,
             figure_rows: int = 0, records=None, methods: dict[int, tuple[str, ...]] | None = None,
             sections: progress.Sections | None = None, name: str | None = None) -> dict[str, Any]:
    """One pass over a split (or over ``records``): probabilities per stage and post-processed
    maps per method.

    Maps are computed only for rows with a non-empty lesion mask; images with an empty
    mask (normal ones) are only counted (``n_empty_masks``), since no map can be scored there.
    ``methods``: {stage: map methods}, default every stage's ``map_methods``. ``sections``: the
    pass is one named section (default name: the split's), its progress bar counting images.
    """
    from pcam_jax.data import pipeline

    methods = methods or {s: stages_lib.get(s).map_methods for s in runs}

    if records is None:
        records = pipeline.load_records(config, split, data_dir)
    size = int(config.data.image_size)
    out = {"probs": {s: [] for s in runs}, "labels": [], "study_id": [], "body_part": [], "hardware": [],
           "maps": {f"stage{s}/{m}": [] for s in runs for m in methods[s]},
           "masks": [], "mask_body_part": [], "images": [], "n_empty_masks": 0, "queued": []}
    sections = sections or progress.Sections(show=False)
    with sections.section(name or f"{split} split: probabilities and maps",
                          total=pipeline.count_records(records)) as bar:
        for batch in pipeline.eval_batches(config, records):
            _collect_batch(batch, runs, out)
            _map_queued(runs, methods, size, figure_rows, out, final=False)
            bar.update(int(batch["valid"].sum()))
        _map_queued(runs, methods, size, figure_rows, out, final=True)
    cat = lambda xs, shape=(0,): np.concatenate(xs) if xs else np.zeros(shape)
    return {
        "probs": {s: cat(v) for s, v in out["probs"].items()},
        "labels": cat(out["labels"]).astype(np.int32),
        "study_id": cat(out["study_id"]), "body_part": cat(out["body_part"]), "hardware": cat(out["hardware"]),
        "maps": {k: cat(v, (0, size, size)) for k, v in out["maps"].items()},
        "masks": cat(out["masks"], (0, size, size)), "mask_body_part": cat(out["mask_body_part"]),
        "images": cat(out["images"], (0, size, size)),
        "n_empty_masks": out["n_empty_masks"],
    }


def _labelled_splits(runs, config, split: str, data_dir, figure_rows: int, methods=None, sections=None):
    """``(test, held, tau_source)``: the collected test split and the collected images that
    choose thresholds (None where there are none).

    With ``config.eval.lesion_labels`` (real data), the test records carry those clinician
    masks and a held-out share of their patients chooses the thresholds
    (`pcam_jax.data.clinician_labels`); otherwise the dataset's own masks and its
    `pcam_jax.data.HELDOUT_MASK_SPLIT` (synthetic: heldout_labelled; FracAtlas: model_selection).
    """
    from pcam_jax.data import clinician_labels, pipeline

    clinician_labels.check_config(config)  # the two label sets share no image
    if clinician_labels.parse_sources(config.eval.lesion_labels):
        scored, held = clinician_labels.evaluation_records(
            config, pipeline.load_records(config, split, data_dir), split)
        test = _collect(runs, config, split, data_dir, figure_rows=figure_rows, records=scored, methods=methods,
                        sections=sections)
        held = (_collect(runs, config, split, data_dir, records=held, methods=methods, sections=sections,
                         name="held-out labels: maps for thresholds") if held is not None else None)
        return test, held, "held-out share of config.eval.lesion_labels"
    test = _collect(runs, config, split, data_dir, figure_rows=figure_rows, methods=methods, sections=sections)
    threshold_split = HELDOUT_MASK_SPLIT.get(config.data.dataset)
    held = (_collect(runs, config, threshold_split, data_dir, methods=methods, sections=sections)
            if threshold_split else None)
    return test, held, threshold_split


def _operating_thresholds(runs, config, data_dir, sections, model_selection: dict | None = None) -> dict:
    """{stage: Youden threshold on model_selection} (`real_data.operating_thresholds`), from
    ``model_selection`` (that split as `_collect` gathered it to choose the map thresholds: the
    same probabilities) where given, rather than a second pass over the split."""
    with sections.section("model_selection operating point", total=1, unit="split") as bar:
        if model_selection is not None:
            thresholds = {s: real_data.youden_threshold(p, model_selection["labels"])
                          for s, p in model_selection["probs"].items()}
        else:
            thresholds = real_data.operating_thresholds(runs, config, data_dir)
        bar.update()
    return thresholds


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
                     methods: dict[int, tuple[str, ...]] | None = None, extra_methods: tuple[str, ...] = (),
                     external=None, save_maps: bool = False) -> dict:
    """Evaluates every trained stage in `workdir`; writes and returns the metrics dict.

    ``lesion_labels`` overrides the run's ``config.eval.lesion_labels`` (clinician masks of
    test images, `pcam_jax.data.clinician_labels`). ``stages`` picks some of the trained stages
    (default: all); ``methods`` ({stage: map methods}) scores fewer maps than a stage's
    ``map_methods`` (e.g. stage 1's CAM and positive CAM without Score-CAM: `pcam_jax.study`);
    ``extra_methods`` adds classifier maps of the registry (``--methods integrated_gradients``) to
    every stage with a trained classifier. ``external``: a labelled folder scored whole instead of
    the run's test split, into ``<workdir>/eval_external/<folder name>`` by default
    (`pcam_jax.evaluation.real_data`). ``save_maps`` also writes ``maps.npz``: what the numbers
    are computed from (`_save_maps`), so anyone can recompute them."""
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir else (
        workdir / "eval_external" / pathlib.Path(external).resolve().name if external else workdir / "eval")
    trained = checkpointing.trained_stages(workdir)
    stages = trained if stages is None else [s for s in stages_lib.parse(stages) if s in trained]
    if not stages:
        raise FileNotFoundError(f"no checkpoints under {workdir / 'checkpoints'}: train first "
                                f"(`pcam-jax train --workdir {workdir}`) or point --workdir at a run")
    t0 = time.perf_counter()
    sections = progress.Sections(show=verbose)   # a progress bar per section, and its seconds
    with sections.section("restore checkpoints", total=len(stages), unit="stage") as bar:
        runs = {}
        for s in stages:
            runs[s] = analysis.load(workdir, s, which)
            bar.update()
    config = runs[stages[-1]].config
    if lesion_labels is not None:
        with config.unlocked():
            config.eval.lesion_labels = lesion_labels
    data_dir = resolve_data_dir(config, data_dir)
    thresholds = {}
    if config.data.dataset != "synthetic" and external:  # from the run's own split, before the folder replaces it
        thresholds = _operating_thresholds(runs, config, data_dir, sections)
    if external:
        config, data_dir, split = real_data.external_setup(config, external, out_dir / "data", lesion_labels)
    dataset = config.data.dataset
    split = split or TEST_SPLIT.get(dataset, "test")
    for stage, run in runs.items():
        if run.config.data.image_size != config.data.image_size:
            raise checkpointing.ConfigMismatchError(
                f"stage {stage} was trained at image size {run.config.data.image_size}, stage "
                f"{stages[-1]} at {config.data.image_size}: evaluate them from separate work directories")

    n_figure = int(config.eval.num_figure_images)
    n_trust = int(config.eval.trust_images)
    methods = {s: tuple((methods or {}).get(s, stages_lib.get(s).map_methods)) for s in stages}
    for name in maps_lib.registry.check(extra_methods) if extra_methods else ():
        for s in stages:  # a classifier map, for stages whose classifier trained (not stage 4's random head)
            if stages_lib.get(s).uses("l1") and not maps_lib.registry.get(name).needs_decoder and name not in methods[s]:
                methods[s] += (name,)
    chosen = evaluators.chosen(config)
    test, held, threshold_split = _labelled_splits(runs, config, split, data_dir, max(n_figure, n_trust), methods,
                                                   sections)
    if config.data.dataset != "synthetic" and not external:
        thresholds = _operating_thresholds(runs, config, data_dir, sections,
                                           held if threshold_split == "model_selection" else None)
    ev = evaluators.Evaluation(runs, config, test, held, threshold_split, methods, out_dir, metrics={
        "split": split, "dataset": dataset, "workdir": str(workdir),
        "checkpoint_steps": {f"stage{s}": r.step for s, r in runs.items()},
        "checkpoint_selection": {f"stage{s}": r.selected_by for s, r in runs.items()},
        "model_selection_thresholds": {f"stage{s}": t for s, t in thresholds.items()}}, progress=sections)
    for evaluator in chosen:  # config.eval.evaluators, in its order (`pcam_jax.evaluation.evaluators`)
        if evaluator.applies(ev) and evaluator.own_progress:  # its own named bars, with ETAs
            evaluator.run(ev)
        elif evaluator.applies(ev):
            with sections.section(evaluator.name, total=1, unit="section") as bar:
                evaluator.run(ev)
                bar.update()
        elif evaluator.name == "localisation":
            ev.metrics["localisation"] = {}
            ev.metrics["localisation_note"] = f"no test image of split {split!r} has a lesion mask"
    metrics = ev.metrics
    if save_maps:
        _save_maps(out_dir / "maps.npz", test, held)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics["config"] = config.to_dict()
    metrics["seconds"] = time.perf_counter() - t0
    metrics["section_seconds"], metrics["section_cpu_seconds"] = dict(sections.seconds), dict(sections.cpu_seconds)
    (out_dir / "metrics.json").write_text(json.dumps(_to_json(metrics), indent=2))
    report.write_report(out_dir / "report.md", metrics, sections=ev.sections)
    if verbose:
        print(report.localisation_table(metrics["localisation"]) if metrics.get("localisation") else
              metrics.get("localisation_note", ""))
        if metrics.get("shortcuts"):
            print()
            print(shortcuts.shortcut_table(metrics["shortcuts"]))
        print()
        print(report.classification_table(metrics["classification"]))
        print("\nseconds per section (wall, share, process CPU):\n" + sections.table())
        print(f"\nwrote {out_dir}/metrics.json, report.md and figures ({metrics['seconds']:.0f} s)")
    return metrics
