"""Classification metrics against a hand-computed table, a pairwise AUROC loop and study loops."""

import math

import numpy as np
import pytest

from pcam_jax.metrics import classification as cls


def _slow_auroc(probs, labels):
    wins, pairs = 0.0, 0
    for p_pos, l_pos in zip(probs, labels):
        if l_pos != 1:
            continue
        for p_neg, l_neg in zip(probs, labels):
            if l_neg != 0:
                continue
            pairs += 1
            wins += 1.0 if p_pos > p_neg else 0.5 if p_pos == p_neg else 0.0
    return wins / pairs


def _table_case():
    # tp 20 (abnormal, p 0.9), fn 10 (abnormal, p 0.2), fp 5 (normal, p 0.8), tn 15 (normal, p 0.1).
    probs = np.array([0.9] * 20 + [0.2] * 10 + [0.8] * 5 + [0.1] * 15)
    labels = np.array([1] * 30 + [0] * 20)
    return probs, labels


def test_hand_computed_table():
    # n = 50. accuracy = (20 + 15) / 50 = 0.7; sensitivity = 20/30; specificity = 15/20.
    # Kappa: p_o = 0.7; predicted abnormal 25, actual abnormal 30, predicted normal 25, actual
    # normal 20: p_e = (25*30 + 25*20) / 50^2 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    # AUROC: each 0.9 beats all 20 normals (400 pairs), each 0.2 beats the 15 at 0.1 (150):
    # 550 / (30 * 20) = 11/12.
    metrics = cls.classification_metrics(*_table_case())
    assert metrics["counts"] == {"tp": 20, "fp": 5, "tn": 15, "fn": 10, "n": 50}
    assert metrics["accuracy"] == pytest.approx(0.7)
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == pytest.approx(0.75)
    assert metrics["cohen_kappa"] == pytest.approx(0.4)
    assert metrics["auroc"] == pytest.approx(11 / 12)
    assert metrics["auroc_undefined_reason"] is None


def test_threshold_is_strict():
    # p = 0.5 is normal at threshold 0.5 ("abnormal if > 0.5").
    metrics = cls.classification_metrics([0.5, 0.51], [0, 1])
    assert metrics["counts"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 0, "n": 2}
    assert metrics["cohen_kappa"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    probs = np.round(np.clip(0.3 * labels + rng.random(60) * 0.7, 0, 1), 1)  # many ties
    assert len(np.unique(probs)) < 15
    assert cls.auroc(probs, labels) == pytest.approx(_slow_auroc(probs, labels))


def test_all_tied_scores_give_half():
    assert cls.auroc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == pytest.approx(0.5)


def test_one_class_is_nan_not_a_crash():
    metrics = cls.classification_metrics([0.9, 0.7, 0.2], [1, 1, 1])
    assert math.isnan(metrics["auroc"]) and math.isnan(metrics["specificity"])
    assert "only one class" in metrics["auroc_undefined_reason"]
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    # Everything predicted and labelled abnormal: chance agreement is 1, kappa undefined.
    assert math.isnan(cls.classification_metrics([0.9, 0.8], [1, 1])["cohen_kappa"])


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="1-D"):
        cls.classification_metrics(np.full((3, 2), 0.5), [0, 1, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cls.classification_metrics([0.2, 1.5], [0, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        cls.classification_metrics([0.2, 0.5], [0, 2])
    with pytest.raises(ValueError, match="entries"):
        cls.classification_metrics([0.2, 0.5, 0.1], [0, 1])


def _studies(seed):
    rng = np.random.default_rng(seed)
    n_studies = 12
    study_label = rng.integers(0, 2, n_studies)
    images_per_study = rng.integers(1, 5, n_studies)
    study_of_image = np.repeat(np.arange(n_studies), images_per_study)
    rng.shuffle(study_of_image)
    ids = np.array([f"patient{s % 5}/study{s}" for s in study_of_image])
    labels = study_label[study_of_image]
    probs = rng.random(ids.size)
    return probs, ids, labels


def test_study_probabilities_match_loop():
    probs, ids, labels = _studies(0)
    totals, counts, study_label = {}, {}, {}
    for p, s, l in zip(probs, ids, labels):
        totals[s] = totals.get(s, 0.0) + p
        counts[s] = counts.get(s, 0) + 1
        study_label[s] = l
    study_probs, study_labels, study_ids = cls.study_probabilities(probs, ids, labels)
    assert list(study_ids) == sorted(totals)
    for s, p, l in zip(study_ids, study_probs, study_labels):
        assert p == pytest.approx(totals[s] / counts[s])
        assert l == study_label[s]
    metrics = cls.study_metrics(probs, ids, labels)
    assert metrics["n_studies"] == len(totals) == metrics["counts"]["n"]
    loop_correct = sum((totals[s] / counts[s] > 0.5) == study_label[s] for s in totals)
    assert metrics["accuracy"] == pytest.approx(loop_correct / len(totals))


def test_study_with_disagreeing_labels_is_named():
    with pytest.raises(ValueError, match="study7"):
        cls.study_probabilities([0.2, 0.3, 0.9], ["study7", "study7", "study8"], [0, 1, 1])


def test_per_group_metrics_match_subsets():
    probs, ids, labels = _studies(1)
    groups = np.array(["XR_WRIST" if "study1" in s or "study3" in s else "XR_HAND" for s in ids])
    result = cls.per_group_metrics(probs, labels, groups)
    assert set(result) == {"XR_WRIST", "XR_HAND"}
    for group, metrics in result.items():
        members = [i for i in range(len(groups)) if groups[i] == group]
        correct = sum((probs[i] > 0.5) == labels[i] for i in members)
        assert metrics["counts"]["n"] == len(members)
        assert metrics["accuracy"] == pytest.approx(correct / len(members))
    per_study = cls.per_group_metrics(probs, labels, groups, study_ids=ids)
    assert per_study["XR_HAND"]["n_studies"] == len(set(ids[groups == "XR_HAND"]))


# ---------------------------------------------------------------- real-data additions (issue 20)


def test_youden_threshold_equals_a_brute_force_search():
    from pcam_jax.evaluation import real_data

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    probs = np.clip(0.3 * labels + rng.normal(0.35, 0.2, 60), 0, 1).round(2)  # ties on purpose
    t = real_data.youden_threshold(probs, labels)
    j = lambda t: np.mean(probs[labels == 1] > t) - np.mean(probs[labels == 0] > t)
    grid = np.linspace(-0.01, 1.01, 2041)
    assert j(t) == pytest.approx(max(j(g) for g in grid))
    assert real_data.youden_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(0.5)


def test_hardware_report_by_hand():
    from pcam_jax.evaluation import real_data

    probs = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.1])
    labels = np.array([1, 1, 0, 0, 1, 0])
    hardware = np.array(["1", "0", "0", "1", "0", ""])
    r = real_data.hardware_report(probs, labels, hardware)
    # hardware-free: probs 0.8 (1), 0.2 (0), 0.6 (1): both positives above the negative -> 1.0
    assert r["auroc_hardware_free"] == 1.0 and r["n_hardware_free"] == 3 and r["n_unknown"] == 1
    # all six: positives 0.9, 0.8, 0.6 vs negatives 0.2, 0.7, 0.1: 8 of 9 pairs ordered
    assert r["auroc_all"] == pytest.approx(8 / 9)
    assert r["p_abnormal_normal_with_hardware"] == pytest.approx(0.7)
    assert r["p_abnormal_normal_without_hardware"] == pytest.approx(0.2)
    assert real_data.hardware_report(probs, labels, [""] * 6) is None
