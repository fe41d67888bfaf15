"""The analysis API (`pcam_jax.load`), `pcam-jax evaluate` and `pcam-jax maps` on a tiny trained run."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import pcam_jax
from pcam_jax.configs import get_config
from pcam_jax.models import create_model
from pcam_jax.training import checkpointing, loop

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fast_compilation):
    workdir = tmp_path_factory.mktemp("analysis_run")
    config = get_config("tiny")
    config.data.data_dir = str(workdir / "data")
    loop.train_and_evaluate(config, workdir, (1, 2, 3))
    return workdir


def _flat(tree, prefix=""):
    """{"a/b": number} of a nested metrics dict (strings and None dropped)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_predict_matches_the_restored_network_for_any_batch_size(workdir):
    run = pcam_jax.load(workdir, stage=3)
    config, variables, _ = checkpointing.restore_for_eval(workdir, 3)
    model = create_model(config.model)
    images = _images(21)  # more than one chunk of 16, not a multiple of it
    logits, _ = model.apply(variables, images[..., None].astype(np.float32) / 255.0)
    expected = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(run.predict(images), expected, rtol=1e-4, atol=1e-6)
    # uint8 and [0, 1] floats are the same images; a single (H, W) image works too.
    np.testing.assert_allclose(run.predict(images.astype(np.float32) / 255.0), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run.predict(images[0]), expected[:1], rtol=1e-4, atol=1e-6)


def test_positive_cam_map_matches_a_numpy_reference(workdir):
    run = pcam_jax.load(workdir, stage=1)
    config, variables, _ = checkpointing.restore_for_eval(workdir, 1)
    images = _images(5, seed=1)
    x = images[..., None].astype(np.float32) / 255.0
    _, features = create_model(config.model).apply(variables, x)
    kernel = np.asarray(variables["params"]["head"]["dense"]["kernel"])
    features = np.asarray(features)
    expected = np.zeros(features.shape[:3])
    for b in range(features.shape[0]):          # slow loop: sum_k relu(W[k, abnormal]) h_k
        for k in range(features.shape[-1]):
            expected[b] += max(kernel[k, 1], 0.0) * features[b, :, :, k]
    raw = run.raw_maps(x, ("positive_cam",))["positive_cam"]
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)

    maps = run.maps(images, method="positive_cam")
    assert maps.shape == (5, 32, 32) and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    big = run.maps(np.repeat(np.repeat(images, 2, axis=1), 2, axis=2), method="positive_cam")
    assert big.shape == (5, 64, 64)  # maps come back at the input size


def test_faithfulness_equals_a_numpy_deletion_loop_and_sanity_runs_the_cascade(workdir):
    run = pcam_jax.load(workdir, stage=1)
    images = _images(18, seed=2)  # more than one chunk of 16: the padded second chunk must not leak
    steps = 4
    faith = run.faithfulness(images, method="positive_cam", steps=steps, road_iterations=5)
    assert set(faith) == {"deletion_auc", "insertion_auc", "road_morf", "road_lerf", "road_combined",
                          "average_drop", "average_increase"}
    assert all(v.shape == (18,) and np.all(np.isfinite(v)) for v in faith.values())
    # Deletion by hand: the map's top floor(i * HW / steps) pixels set to 0, raster order on ties.
    x = images[..., None].astype(np.float32) / 255.0
    saliency = run.maps(images, method="positive_cam")
    expected = []
    for b in range(len(images)):
        order = np.argsort(-saliency[b].reshape(-1), kind="stable")
        curve = []
        for i in range(steps + 1):
            flat = x[b].reshape(-1).copy()
            flat[order[:(i * flat.size) // steps]] = 0.0
            curve.append(run.predict(flat.reshape(32, 32))[0])
        expected.append((sum(curve) - 0.5 * (curve[0] + curve[-1])) / steps)
    np.testing.assert_allclose(faith["deletion_auc"], expected, rtol=1e-3, atol=1e-4)
    # Average drop by hand: the image multiplied by its map.
    p, p_masked = run.predict(images), run.predict(x[..., 0] * saliency)
    np.testing.assert_allclose(faith["average_drop"], 100 * np.maximum(p - p_masked, 0) / (p + 1e-7),
                               rtol=1e-3, atol=1e-3)

    checks = run.sanity(images[:2], methods=("cam", "grad_cam"))
    assert set(checks["cascade"]) == {"cam", "grad_cam"}
    assert len(checks["cascade"]["cam"]["ssim"]) == len(checks["steps"])  # "original", then each re-initialised part
    with pytest.raises(ValueError, match="classifier maps"):
        run.sanity(images[:2], methods=("decoder",))


def test_bad_images_and_methods_are_clear_errors(workdir):
    run = pcam_jax.load(workdir, stage=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run.predict(np.full((1, 32, 32), 7.0, np.float32))
    with pytest.raises(ValueError, match="unknown map method"):
        run.maps(_images(1), method="saliency")
    with pytest.raises(ValueError, match="decoder map needs a run of stage 3"):
        run.maps(_images(1), method="decoder")


def test_evaluate_in_a_fresh_process_reproduces_the_numbers(workdir):
    from pcam_jax.evaluation.evaluate import evaluate_workdir

    metrics = evaluate_workdir(workdir, verbose=False)
    methods = {f"stage1/{m}" for m in ("cam", "positive_cam", "grad_cam", "grad_cam_pp", "layer_cam", "score_cam",
                                        "hires_cam", "xgrad_cam", "ablation_cam", "eigen_cam")}
    methods |= {"stage2/positive_cam", "stage3/decoder", "stage3/positive_cam"}
    assert set(metrics["localisation"]) == methods
    for name in ("metrics.json", "report.md", "figure2.png", "pr_curves.png", "confusion_matrix.png"):
        assert (workdir / "eval" / name).is_file(), name
    # Test split of the tiny config: 16 images, half abnormal (scored), half normal (excluded).
    first = metrics["localisation"]["stage1/cam"]
    assert first["n_images"] == 8 and first["n_excluded"] == 8
    assert first["tau_chosen_on"] == "heldout_labelled"
    assert metrics["classification"]["stage3"]["image"]["counts"]["n"] == 16
    # Every section of the evaluation is timed (and had a progress bar when verbose).
    assert {"restore checkpoints", "test split: probabilities and maps", "localisation metrics",
            "faithfulness (4 images)", "sanity (2 images)", "classification"} <= set(metrics["section_seconds"])
    assert set(metrics["section_seconds"]) == set(metrics["section_cpu_seconds"])

    result = subprocess.run(
        [sys.executable, "-m", "pcam_jax.cli", "evaluate", "--workdir", str(workdir),
         "--out", str(workdir / "eval_again")],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((workdir / "eval_again" / "metrics.json").read_text())
    first_json = json.loads((workdir / "eval" / "metrics.json").read_text())
    # Equal up to float rounding (the test process compiles without XLA's optimisations).
    assert _flat(again["localisation"]) == pytest.approx(_flat(first_json["localisation"]), rel=1e-5, abs=1e-7)
    assert _flat(again["classification"]) == pytest.approx(_flat(first_json["classification"]), rel=1e-5, abs=1e-7)
    assert again["checkpoint_steps"] == first_json["checkpoint_steps"]


def test_evaluation_maps_lesion_images_in_whole_chunks_with_the_same_maps(workdir):
    # `pcam-jax evaluate` queues the few lesion images of each eval batch and maps them in whole
    # chunks; the maps must be those of each image mapped alone (the independent reference).
    from pcam_jax import maps as maps_lib
    from pcam_jax.evaluation import evaluate, progress

    run = pcam_jax.load(workdir, stage=1)
    methods = {1: ("positive_cam", "score_cam")}
    run.chunk = 3  # tiny test split: 8 lesion images in eval batches of 8 -> chunks of 3, 3, then 2
    sections = progress.Sections(show=False)
    test = evaluate._collect({1: run}, run.config, "test", None, figure_rows=8, methods=methods, sections=sections)
    assert set(sections.seconds) == {"test split: probabilities and maps"}
    images = test["images"][..., None]
    assert len(images) == len(test["masks"]) == 8
    for method in methods[1]:
        alone = np.concatenate([run.raw_maps(images[i:i + 1], (method,))[method] for i in range(len(images))])
        expected = np.asarray(maps_lib.postprocess(alone, 32, 32))
        np.testing.assert_allclose(test["maps"][f"stage1/{method}"], expected, atol=1e-5, err_msg=method)


def test_maps_command_writes_overlays_and_reports_unreadable_files(workdir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pcam_jax.cli", "maps", "--workdir", str(workdir), "--method", "positive_cam",
         "--out", str(out), str(folder)],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # one file failed, the rest processed
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert Image.open(out / "gray_positive_cam.png").size == (40, 50)
    assert Image.open(out / "colour_positive_cam.png").size == (60, 30)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(pathlib.Path(r["path"]).name for r in rows) == ["colour.jpg", "gray.png"]
    assert all(0.0 <= float(r["p_abnormal"]) <= 1.0 for r in rows)


def test_pixel_attributions_are_methods_like_the_others(workdir, tmp_path):
    """Integrated Gradients from `run.maps` equals the pure function on the restored network,
    and `pcam-jax evaluate --methods` scores it beside a stage's own maps."""
    import jax

    from pcam_jax.evaluation.evaluate import evaluate_workdir
    from pcam_jax.maps import pixel_attribution as pa, postprocess
    from pcam_jax.models import classifier_apply_fn

    run = pcam_jax.load(workdir, stage=1)
    images = _images(3, seed=4)
    got = run.maps(images, method="integrated_gradients")
    x = images[..., None].astype(np.float32) / 255.0
    logits_fn = lambda y: classifier_apply_fn(run.model, run.variables)(y)[0]
    ig = pa.integrated_gradients(pa.target_logit(logits_fn, np.ones(3, np.int32)), x, 0.0, 32, 8)
    np.testing.assert_allclose(got, postprocess(pa.saliency_map(ig), 32, 32), atol=2e-4)
    assert jax.numpy.isfinite(got).all()
    metrics = evaluate_workdir(workdir, stages=(1,), methods={1: ("positive_cam",)}, out_dir=tmp_path,
                               extra_methods=("integrated_gradients",), verbose=False)
    assert {"stage1/positive_cam", "stage1/integrated_gradients"} <= set(metrics["localisation"])
def _reference_localisation(maps, masks, held_maps, held_masks, tolerance):
    """Localisation by plain loops over images, pixels and thresholds: the definitions of
    docs/METHOD.md section 4, written without pcam_jax.metrics."""
    keep = [i for i in range(len(masks)) if masks[i].any()]
    hits, energy = [], []
    for i in keep:
        peak_y, peak_x = divmod(int(np.argmax(maps[i])), maps.shape[2])   # first maximum, row-major
        hits.append(any((y - peak_y) ** 2 + (x - peak_x) ** 2 <= tolerance ** 2 for y, x in np.argwhere(masks[i])))
        energy.append(maps[i][masks[i] > 0].sum() / maps[i].sum() if maps[i].sum() > 0 else 0.0)

    def mean_iou_dice(m, k, tau):
        ious, dices = [], []
        for i in range(len(k)):
            if not k[i].any():
                continue
            pred, true = m[i] >= tau, k[i] > 0
            inter = np.logical_and(pred, true).sum()
            ious.append(inter / np.logical_or(pred, true).sum())
            dices.append(2 * inter / (pred.sum() + true.sum()))
        return np.mean(ious), np.mean(dices)

    taus = [round(0.05 * j, 6) for j in range(1, 20)]
    scores = [mean_iou_dice(held_maps, held_masks, t)[0] for t in taus]
    tau = taus[scores.index(max(scores))]                                 # ties: the smallest tau
    iou, dice = mean_iou_dice(maps[keep], masks[keep], tau)
    # PxAP: every pixel of the scored images pooled, thresholds 1.0, 0.99, ..., 0.0 (all maps >= 0)
    scores_all, truth = maps[keep].ravel(), masks[keep].ravel() > 0
    ap, previous_recall = 0.0, 0.0
    for t in [1.0] + [j / 100 for j in range(99, -1, -1)]:
        predicted = scores_all >= t
        tp = np.sum(predicted & truth)
        recall = tp / truth.sum()
        if predicted.sum():
            ap += tp / predicted.sum() * (recall - previous_recall)
        previous_recall = recall
    return dict(pointing_game=np.mean(hits), energy_pointing_game=np.mean(energy), tau=tau, iou=iou,
                dice=dice, pxap=ap)


def _reference_classification(probs, labels):
    predicted = probs > 0.5
    tp, tn = np.sum(predicted & (labels == 1)), np.sum(~predicted & (labels == 0))
    fp, fn = np.sum(predicted & (labels == 0)), np.sum(~predicted & (labels == 1))
    n = len(labels)
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n ** 2
    pairs = [(p, q) for p in probs[labels == 1] for q in probs[labels == 0]]
    return dict(accuracy=observed, sensitivity=tp / (tp + fn), specificity=tn / (tn + fp),
                cohen_kappa=(observed - chance) / (1 - chance),
                auroc=np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs]))


def test_evaluation_numbers_recomputed_from_the_saved_maps(workdir, tmp_path):
    """Every localisation and classification number `evaluate` reports (MaxBoxAcc aside: its boxes
    are checked against OpenCV in test_localisation.py) equals an independent loop over the maps,
    masks and probabilities it saved."""
    from pcam_jax.evaluation.evaluate import evaluate_workdir

    methods = {1: ("cam", "positive_cam"), 2: ("positive_cam",), 3: ("decoder", "positive_cam")}
    metrics = evaluate_workdir(workdir, out_dir=tmp_path, verbose=False, methods=methods, save_maps=True)
    saved = np.load(tmp_path / "maps.npz")
    tolerance = get_config("tiny").eval.pointing_tolerance
    names = [f"stage{s}/{m}" for s, ms in methods.items() for m in ms]
    assert set(metrics["localisation"]) == set(names)
    for name in names:
        got = metrics["localisation"][name]
        want = _reference_localisation(saved[f"test/{name}"], saved["test_masks"], saved[f"held/{name}"],
                                       saved["held_masks"], tolerance)
        assert got["tau"] == pytest.approx(want.pop("tau"), abs=1e-9), name
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (name, key)
    for stage in (1, 2, 3):
        got = metrics["classification"][f"stage{stage}"]["image"]
        for key, value in _reference_classification(saved[f"probs/stage{stage}"], saved["labels"]).items():
            assert got[key] == pytest.approx(value, abs=1e-9), (stage, key)
    # not vacuous: the maps differ between methods, and all 16 test images / 8 lesion masks are there
    assert not np.allclose(saved["test/stage1/cam"], saved["test/stage3/decoder"])
    assert len(saved["labels"]) == 16 and len(saved["test_masks"]) == 8
