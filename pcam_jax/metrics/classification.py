"""Classification metrics per image, per study and per group (body part), in numpy.

`probs` is always the probability of the abnormal class, shape (B,); `labels` are 0 (normal)
or 1 (abnormal). A prediction is abnormal when `prob > threshold` (default 0.5), at image and
at study level alike (docs/METHOD.md section 4). Every function returns plain Python numbers so
the result goes straight into `json.dump`; a metric that is undefined on the given data
(AUROC with one class, sensitivity with no abnormal case, ...) is NaN, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"probs and labels must be 1-D (B,); got shapes {probs.shape} and {labels.shape}. "
            "Pass the abnormal-class probability per image, not the (B, 2) softmax.")
    if probs.shape != labels.shape:
        raise ValueError(f"probs has {probs.shape[0]} entries but labels has {labels.shape[0]}.")
    if probs.size == 0:
        raise ValueError("No examples: probs and labels are empty.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
        raise ValueError(
            f"probs must be finite probabilities in [0, 1]; entries {bad[:5].tolist()} are "
            f"{probs[bad[:5]].tolist()}. Apply a softmax/sigmoid to the logits first.")
    if not np.all((labels == 0) | (labels == 1)):
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        raise ValueError(
            f"labels must be 0 (normal) or 1 (abnormal); entries {bad[:5].tolist()} are "
            f"{labels[bad[:5]].tolist()}.")
    return probs, labels.astype(np.int64)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start of each run of equal values in sorted order.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], values.size]  # exclusive
    run_ranks = (run_starts + 1 + run_ends) / 2.0  # mean of ranks start+1 .. end
    run_of_sorted = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_ranks[run_of_sorted]
    return ranks


def auroc(probs, labels) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted as 1/2.

    AUROC = P(score of a random abnormal > score of a random normal) + 0.5 P(equal).
    Returns NaN when only one class is present (the curve is undefined).
    """
    probs, labels = _check_probs_labels(probs, labels)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum_pos = _average_ranks(probs)[labels == 1].sum()
    u_statistic = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def classification_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """Accuracy, AUROC, sensitivity, specificity and Cohen's kappa of thresholded probabilities.

    Args:
        probs: (B,) abnormal-class probabilities in [0, 1].
        labels: (B,) 0 = normal, 1 = abnormal.
        threshold: predicted abnormal when prob > threshold.

    Returns:
        {"accuracy", "auroc", "sensitivity", "specificity", "cohen_kappa": float (NaN when
          undefined), "auroc_undefined_reason": None or a sentence, "threshold": float,
          "counts": {"tp", "fp", "tn", "fn", "n": int}}.
    """
    probs, labels = _check_probs_labels(probs, labels)
    predicted = probs > threshold
    actual = labels == 1
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    tn = int(np.sum(~predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    n = tp + fp + tn + fn

    # Cohen's kappa: agreement beyond what the two marginals give by chance.
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n**2
    kappa = _safe_ratio(observed - chance, 1.0 - chance)

    n_pos, n_neg = tp + fn, tn + fp
    reason = None
    if n_pos == 0 or n_neg == 0:
        reason = (f"AUROC undefined: only one class present ({n_pos} abnormal, {n_neg} normal).")
    return {
        "accuracy": float(observed),
        "auroc": auroc(probs, labels),
        "auroc_undefined_reason": reason,
        "sensitivity": _safe_ratio(tp, n_pos),
        "specificity": _safe_ratio(tn, n_neg),
        "cohen_kappa": kappa,
        "threshold": float(threshold),
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n},
    }


def study_probabilities(probs, study_ids, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-study probability = mean of the study's image probabilities.

    Args:
        probs: (B,) abnormal-class probabilities.
        study_ids: (B,) study identifiers (str or int); images of one study share one.
        labels: (B,) image labels; every image of a study must carry the study's label.

    Returns:
        (study_probs (S,) float64, study_labels (S,) int64, study_ids (S,)), studies in sorted id
        order.

    Raises:
        ValueError naming the studies whose images disagree on the label.
    """
    probs, labels = _check_probs_labels(probs, labels)
    study_ids = np.asarray(study_ids)
    if study_ids.shape != probs.shape:
        raise ValueError(
            f"study_ids has shape {study_ids.shape} but probs has {probs.shape}: one id per image.")
    unique_ids, study_of_image = np.unique(study_ids, return_inverse=True)
    n_studies = unique_ids.size
    images_per_study = np.bincount(study_of_image, minlength=n_studies)
    study_probs = np.bincount(study_of_image, weights=probs, minlength=n_studies) / images_per_study
    positives_per_study = np.bincount(study_of_image, weights=labels, minlength=n_studies)
    mixed = (positives_per_study > 0) & (positives_per_study < images_per_study)
    if np.any(mixed):
        names = [str(s) for s in unique_ids[mixed][:10]]
        raise ValueError(
            f"{int(mixed.sum())} studies have images with different labels, e.g. {names}. "
            "A study's label applies to all its images; check the study_id / label columns.")
    study_labels = (positives_per_study > 0).astype(np.int64)
    return study_probs, study_labels, unique_ids


def study_metrics(probs, study_ids, labels, threshold: float = 0.5) -> dict:
    """`classification_metrics` on study probabilities (mean over a study's images).

    Returns the same layout as `classification_metrics` plus "n_studies"; counts are studies.
    """
    study_probs, study_labels, unique_ids = study_probabilities(probs, study_ids, labels)
    metrics = classification_metrics(study_probs, study_labels, threshold)
    metrics["n_studies"] = int(unique_ids.size)
    return metrics


def per_group_metrics(probs, labels, groups, study_ids: Sequence | np.ndarray | None = None,
                      threshold: float = 0.5) -> dict[str, dict]:
    """Metrics within each group (the body part for MURA), image or study level.

    Args:
        probs, labels: (B,) as in `classification_metrics`.
        groups: (B,) group name per image, e.g. "XR_WRIST".
        study_ids: optional (B,) study ids; when given, each group is scored per study.
        threshold: decision threshold.

    Returns:
        {group name (str): metrics dict}, groups in sorted order.
    """
    probs, labels = _check_probs_labels(probs, labels)
    groups = np.asarray(groups)
    if groups.shape != probs.shape:
        raise ValueError(f"groups has shape {groups.shape} but probs has {probs.shape}.")
    if study_ids is not None:
        study_ids = np.asarray(study_ids)
        if study_ids.shape != probs.shape:
            raise ValueError(f"study_ids has shape {study_ids.shape} but probs has {probs.shape}.")
    result = {}
    for group in np.unique(groups):  # a handful of body parts, not a loop over examples
        members = groups == group
        if study_ids is None:
            result[str(group)] = classification_metrics(probs[members], labels[members], threshold)
        else:
            result[str(group)] = study_metrics(probs[members], study_ids[members], labels[members], threshold)
    return result
