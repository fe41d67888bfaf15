"""What `pcam-jax evaluate` adds on real radiographs (FracAtlas, a hospital's folder).

- **Operating point from model selection.** 0.5 on P(abnormal) means little after class-weighted
  training or at another prevalence, and choosing the threshold on test would be fitting to it.
  Per stage, `youden_threshold` on the run's own ``model_selection`` split (Youden's J =
  sensitivity + specificity - 1, maximal) fixes it; the test (or external) metrics at that
  threshold are reported beside those at 0.5.
- **Hardware subgroups** (`hardware_report`): implants, casts and splints sit on fractured
  limbs, a shortcut. AUROC on hardware-free images against all, and the mean P(abnormal) of
  normal images with against without hardware (a classifier reading the hardware calls the
  first group abnormal more often).
- **External validation** (`external_setup`): a labelled folder as `pcam-jax prepare folder`
  reads it (``labels.csv`` with path,label[,split,body_part,hardware]; mask PNGs mirroring the
  image paths in ``<folder>/masks``, any image extension), prepared into the output directory
  and scored whole (every split its CSV names) with the run's checkpoints, preprocessing and
  model-selection thresholds: the report the run gets on its own test split.
"""

from __future__ import annotations

import pathlib

import numpy as np

from pcam_jax.metrics import classification

MASKS_FOLDER = "masks"


def youden_threshold(probs, labels) -> float:
    """The threshold t maximising sensitivity + specificity - 1 of ``probs > t``.

    Candidates are midpoints between consecutive distinct probabilities (and below the lowest);
    of equal J the highest threshold wins (fewer false alarms).
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if labels.min() == labels.max():
        raise ValueError("a threshold needs both classes in the model_selection split")
    values = np.unique(probs)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2])
    predicted = probs[None, :] > candidates[:, None]
    positive = labels == 1
    j = predicted[:, positive].mean(axis=1) - predicted[:, ~positive].mean(axis=1)
    return float(candidates[len(j) - 1 - np.argmax(j[::-1])])


def predict_split(runs: dict, config, records) -> tuple[dict, np.ndarray]:
    """({stage: P(abnormal)}, labels) of every record, one unaugmented pass."""
    from pcam_jax.data import pipeline

    probs, labels = {s: [] for s in runs}, []
    for batch in pipeline.eval_batches(config, records):
        valid = batch["valid"]
        labels.append(batch["label"][valid])
        for stage, run in runs.items():
            probs[stage].append(run.predict(batch["image"][valid]))
    return {s: np.concatenate(p) for s, p in probs.items()}, np.concatenate(labels)


def operating_thresholds(runs: dict, config, data_dir) -> dict[int, float]:
    """{stage: Youden threshold on the run's own model_selection split}; {} without that split."""
    from pcam_jax.data import pipeline

    try:
        records = pipeline.load_records(config, "model_selection", data_dir)
    except ValueError:  # a dataset without a model_selection split (synthetic has one; folders may not)
        return {}
    probs, labels = predict_split(runs, config, records)
    return {stage: youden_threshold(p, labels) for stage, p in probs.items()}


def hardware_report(probs, labels, hardware) -> dict | None:
    """AUROC on all and on hardware-free images, mean P(abnormal) of normal images by hardware;
    None when no image says whether it has hardware ("" everywhere)."""
    probs, labels, hardware = np.asarray(probs), np.asarray(labels), np.asarray(hardware).astype(str)
    known = hardware != ""
    if not known.any():
        return None
    free, normal = hardware == "0", labels == 0
    mean = lambda m: float(probs[m].mean()) if m.any() else float("nan")
    return {
        "auroc_all": classification.auroc(probs, labels),
        "auroc_hardware_free": classification.auroc(probs[free], labels[free]),
        "n_all": int(len(labels)), "n_hardware_free": int(free.sum()),
        "n_hardware": int((hardware == "1").sum()), "n_unknown": int((~known).sum()),
        "p_abnormal_normal_with_hardware": mean(normal & (hardware == "1")),
        "p_abnormal_normal_without_hardware": mean(normal & free),
        "n_normal_with_hardware": int((normal & (hardware == "1")).sum()),
        "p_abnormal_abnormal_with_hardware": mean(~normal & (hardware == "1")),
        "p_abnormal_abnormal_without_hardware": mean(~normal & free),
    }


HARDWARE_COLUMNS = (("auroc_all", "AUROC all"), ("auroc_hardware_free", "AUROC hardware-free"),
                    ("p_abnormal_normal_with_hardware", "P(abn) normal + hw"),
                    ("p_abnormal_normal_without_hardware", "P(abn) normal, no hw"),
                    ("p_abnormal_abnormal_with_hardware", "P(abn) abnormal + hw"),
                    ("p_abnormal_abnormal_without_hardware", "P(abn) abnormal, no hw"))
HARDWARE_NOTE = ("Implants, casts and splints (`hardware`) are a shortcut to 'fractured'. A model that reads "
                 "them loses AUROC on hardware-free images and gives normal images with hardware a higher "
                 "P(abnormal) than normal images without.")


def hardware_table(reports: dict) -> str:
    """Markdown: one row per stage of `hardware_report`."""
    from pcam_jax.evaluation import report

    first = next(iter(reports.values()))
    note = (f"\n\n{first['n_all']} images: {first['n_hardware_free']} hardware-free, {first['n_hardware']} with "
            f"hardware ({first['n_normal_with_hardware']} of them normal), {first['n_unknown']} unknown. ")
    return report.format_table(reports, [k for k, _ in HARDWARE_COLUMNS], headers=dict(HARDWARE_COLUMNS),
                               row_header="stage") + note + HARDWARE_NOTE


def operating_point_section(ev) -> None:
    """Evaluator: each stage's test metrics at its model_selection threshold, in the
    classification entry (``image_at_model_selection_threshold``) and a report section."""
    from pcam_jax.evaluation import report

    rows = {}
    for name, threshold in ev.metrics["model_selection_thresholds"].items():
        stage = int(name.removeprefix("stage"))
        entry = classification.classification_metrics(ev.test["probs"][stage], ev.test["labels"], threshold)
        ev.metrics["classification"][name]["image_at_model_selection_threshold"] = rows[name] = entry
    columns = ["threshold"] + [k for k, _ in report.CLASSIFICATION_COLUMNS if k != "n"]
    ev.sections.append(("At the model_selection operating point", report.format_table(
        rows, columns, headers=dict(report.CLASSIFICATION_COLUMNS), row_header="model")
        + "\n\nThreshold per stage: Youden's J on the run's own model_selection split (not on this one)."))


def has_hardware(ev) -> bool:
    return "hardware" in ev.test and (np.asarray(ev.test["hardware"]).astype(str) != "").any()


def hardware_section(ev) -> None:
    """Evaluator: `hardware_report` per stage, in metrics and a report section."""
    reports = {f"stage{s}": hardware_report(p, ev.test["labels"], ev.test["hardware"])
               for s, p in ev.test["probs"].items()}
    ev.metrics["hardware"] = reports
    ev.sections.append(("Shortcut reliance: hardware", hardware_table(reports)))


def external_setup(config, folder, data_dir, lesion_labels: str | None = None):
    """(config, data_dir, split) that read the labelled ``folder`` as a whole: prepared (readable
    images only: `skip_corrupt`) into ``data_dir``; its masks from ``lesion_labels``, else
    ``<folder>/masks`` when that exists."""
    from pcam_jax import runtime

    runtime.tensorflow()  # before TFDS touches TensorFlow
    from pcam_jax.data import folder as folder_lib

    folder = pathlib.Path(folder).expanduser().resolve()
    print(f"External validation on {folder}: preparing it into {data_dir} ...", flush=True)
    built = folder_lib.prepare(folder, data_dir, skip_corrupt=True)
    skipped = [p for paths in built.info.metadata.get("skipped_corrupt", {}).values() for p in paths]
    if skipped:
        print(f"  skipped {len(skipped)} unreadable images: {', '.join(skipped[:5])}", flush=True)
    masks = lesion_labels if lesion_labels is not None else (
        str(folder / MASKS_FOLDER) if (folder / MASKS_FOLDER).is_dir() else "")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.dataset, config.data.data_dir = "folder", str(data_dir)
        config.data.folder_root, config.data.folder_csv = str(folder), folder_lib.DEFAULT_CSV
        config.data.model_selection_fraction = folder_lib.RadiographFolder.BUILDER_CONFIGS[0].model_selection_fraction
        config.data.folder_test_fraction = folder_lib.RadiographFolder.BUILDER_CONFIGS[0].test_fraction
        config.eval.lesion_labels = masks
    return config, str(data_dir), "+".join(built.info.splits)
