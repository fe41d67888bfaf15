"""The paper's whole path on a MURA-shaped world at tiny size: `pcam-jax mura-world` ->
`prepare mura` -> `train` stages 1, 2, 3 with clinician labels -> `evaluate` -> a report with
per-body-part kappa and localisation; and the one-line errors of bad label files."""

import contextlib
import io
import json
import re

import numpy as np
import pytest

from tests.commands import pcam_jax_command
from pcam_jax.data import clinician_labels, lesions, mura_world
from pcam_jax.training import checkpointing

pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py
slow = pytest.mark.slow  # three stages and an evaluation: minutes on a busy 2-core machine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mura_world")
    assert pcam_jax_command("mura-world", "--out", root / "download", "--size", "tiny") == 0
    assert pcam_jax_command("prepare", "mura", "--manual_dir", root / "download",
                            "--data_dir", root / "data") == 0
    return root


@pytest.fixture(scope="module")
def trained(world):
    run = world / "run"
    labels = world / "download"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = pcam_jax_command(
            "train", "--config", "tiny", "--workdir", run, "--data_dir", world / "data",
            "--config.data.dataset=mura", "--config.train.log_every_steps=4",
            f"--config.stage3.lesion_labels={labels / 'lesions_train.json'}",
            f"--config.eval.lesion_labels={labels / 'lesions_valid.json'}")
        assert code == 0, printed.getvalue()
        # absl keeps flag values between commands of one process: name --out every time.
        assert pcam_jax_command("evaluate", "--workdir", run, "--out", run / "eval") == 0
    return run, printed.getvalue()


def test_world_looks_like_mura(world):
    root = world / "download" / "MURA-v1.1"
    parts = {p.name for p in (root / "train").iterdir()}
    assert parts == set(mura_world.BODY_PARTS)
    rows = (root / "train_labeled_studies.csv").read_text().splitlines()
    assert not rows[0].startswith("path") and sum(not r.split(",")[0].endswith("/") for r in rows) == 1
    images = (root / "train_image_paths.csv").read_text().split()
    assert all(p.startswith("MURA-v1.1/train/XR_") for p in images)
    from PIL import Image

    modes = {Image.open(root.parent / p).mode for p in images}
    sizes = {Image.open(root.parent / p).size for p in images}
    assert modes == {"L", "RGB"} and len(sizes) > 10 and any(w != h for w, h in sizes)
    studies = {p.rsplit("/", 1)[0] for p in images}
    per_patient = {}
    for s in studies:
        per_patient.setdefault(s.split("/")[3], set()).add(s)
    assert max(len(v) for v in per_patient.values()) >= 2


def test_coco_outlines_cover_the_lesions_they_outline():
    """Each polygon (convex hull of pixel corners) contains every pixel of its region."""
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:9, 3:6] = 1
    mask[20, 10:30] = 1                       # a thin "fracture line"
    mask[rng.integers(12, 18, 6), rng.integers(30, 38, 6)] = 1
    polygons = mura_world.outline_polygons(mask)
    union = np.zeros_like(mask)
    for polygon in polygons:
        union |= lesions.polygon_mask(polygon, 30, 40, "test")
    assert np.all(union[mask > 0] == 1)
    # The hull of a box-shaped region is that box exactly.
    assert lesions.polygon_mask(mura_world.outline_polygons(mask[:10])[0], 10, 40, "t").sum() == 12


@slow
def test_stage3_and_evaluation_run_on_the_labels(trained):
    run, out = trained
    assert "config.stage3.lesion_labels:" in out and "labelled train images" in out
    assert "held out to choose thresholds" in out
    for stage in (1, 2, 3):
        config, _, meta = checkpointing.restore_for_eval(run, stage, "latest")
        assert meta["stage"] == stage and config.data.dataset == "mura"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "valid"
    decoder = metrics["localisation"]["stage3/decoder"]
    assert decoder["n_images"] >= 3 and decoder["tau_chosen_on"].startswith("held-out share")
    per_group = metrics["localisation_per_group"]["stage3/decoder"]
    assert len(per_group) >= 2 and all(g.startswith("XR_") for g in per_group)
    assert sum(m["n_images"] for m in per_group.values()) == decoder["n_images"]
    # the body parts' pointing game at the overall table's tolerance (a raw -1 once meant 1 px there)
    assert all(m["tolerance"] == decoder["tolerance"] > 1 for m in per_group.values())
    study_groups = metrics["classification"]["stage3"]["per_group"]
    assert len(study_groups) == 7 and all("n_studies" in m for m in study_groups.values())
    report = (run / "eval" / "report.md").read_text()
    section = report.split("## Per body part")[1]
    assert "stage3 study kappa" in section and "stage3/decoder PxAP" in section
    assert all(part in section for part in mura_world.BODY_PARTS)


@slow
def test_unknown_image_in_eval_labels_is_one_line_naming_the_file(trained, tmp_path, capsys):
    run, _ = trained
    coco = json.loads((run.parent / "download" / "lesions_valid.json").read_text())
    coco["images"][0]["file_name"] = "MURA-v1.1/valid/XR_WRIST/patient99999/study1_positive/image1.png"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    assert pcam_jax_command("evaluate", "--workdir", run, "--lesion_labels", bad,
                            "--out", tmp_path / "eval") == 2
    # Besides the sections' progress bars (stderr, tqdm), one line: no traceback.
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(err) == 1 and str(bad) in err[0] and "patient99999" in err[0]
    assert "unmatched_labels=drop" in err[0]


def test_stage3_label_on_a_test_image_overlaps_and_is_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("path,x0,y0,x1,y1\nMURA-v1.1/x.png,0,0,2,2\n")
    from pcam_jax.configs import get_config

    config = get_config("mura")
    config.stage3.lesion_labels = str(tmp_path / "a.csv")
    config.eval.lesion_labels = str(tmp_path / "b.csv")
    with pytest.raises(ValueError, match="both label 1 image"):
        clinician_labels.check_config(config)
    config.stage3.lesion_labels = ""
    with pytest.raises(ValueError, match="stage3.lesion_labels"):
        clinician_labels.check_config(config, needs_labelled=True)


def test_match_counts_drops_and_names_unmatched(tmp_path, capsys):
    sizes = {"train": {"t/a.png": (8, 8), "t/b.png": (8, 8)}, "model_selection": {"m/c.png": (8, 8)}}
    source = tmp_path / "boxes.csv"
    source.write_text("path,x0,y0,x1,y1\nt/a.png,0,0,4,4\nt/a.png,4,4,8,8\nm/c.png,1,1,3,3\n"
                      "nowhere.png,0,0,1,1\n")
    with pytest.raises(clinician_labels.LabelMatchError, match=r"boxes.csv line 5: nowhere.png"):
        clinician_labels.match([source], sizes, use=("train",), field="config.stage3.lesion_labels")
    masks = clinician_labels.match([source], sizes, use=("train",), unmatched="drop",
                                   field="config.stage3.lesion_labels")
    assert list(masks) == ["t/a.png"] and masks["t/a.png"].sum() == 32  # two boxes united
    out = capsys.readouterr().out
    assert "1 labelled train images" in out and "1 on model_selection images (unused)" in out
    assert "1 unmatched entries dropped" in out


def test_threshold_patients_are_a_hashed_share():
    patients = [f"p{i}" for i in range(10)]
    held = clinician_labels.threshold_patients(patients, 0.3)
    assert len(held) == 3 and held == clinician_labels.threshold_patients(patients[::-1], 0.3)
    assert len(clinician_labels.threshold_patients(["a", "b"], 0.01)) == 1
    assert clinician_labels.threshold_patients(["a"], 0.5) == set()
    assert len(clinician_labels.threshold_patients(["a", "b"], 0.99)) == 1


@slow
def test_maps_command_reads_dicom_and_16_bit_png_as_their_8_bit_twin(trained, tmp_path, capsys):
    """The done criterion of `pcam-jax maps`: a MONOCHROME1 DICOM and a 16-bit PNG give the
    probability of their 8-bit twin (to 1e-3); a DICOM without pixel data is one line naming it."""
    import csv

    from PIL import Image

    from tests import dicom_files

    run, _ = trained
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(5)
    eight = (rng.random((60, 45)) * 255).round().astype(np.uint8)
    Image.fromarray(eight).save(folder / "a_eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(folder / "b_sixteen.png")
    stored = np.round((255 - eight.astype(np.float64)) * 4095 / 255).astype(np.uint16)
    dicom_files.write(dicom_files.dataset(stored, bits_stored=12, photometric="MONOCHROME1"),
                      folder / "c_monochrome1")  # suffix-less, as PACS exports write them
    empty = dicom_files.dataset(np.zeros((4, 4), np.uint16))
    del empty.PixelData
    dicom_files.write(empty, folder / "d_report.dcm")
    out = tmp_path / "overlays"
    assert pcam_jax_command("maps", "--workdir", run, "--out", out, "--batch_size", 2, folder) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "d_report.dcm" in line]
    assert err and "without pixel data" in err[0]
    with open(out / "predictions.csv") as f:
        rows = {r["path"].rsplit("/", 1)[1]: float(r["p_abnormal"]) for r in csv.DictReader(f)}
    assert sorted(rows) == ["a_eight.png", "b_sixteen.png", "c_monochrome1"]
    np.testing.assert_allclose([rows["b_sixteen.png"], rows["c_monochrome1"]], rows["a_eight.png"], atol=1e-3)
    assert Image.open(out / "c_monochrome1_positive_cam.png").size == (45, 60)


@pytest.mark.parametrize("bad, message", [
    ({"segmentation": [[1, 1, 5, 5]]}, "at least 3"),
    ({"segmentation": [[1, 1, 5, 1, 5, 5]], "image": {"height": 9}}, "COCO says"),
])
def test_bad_coco_entries_name_the_file(tmp_path, bad, message):
    image = {"id": 1, "file_name": "t/a.png", "height": 8, "width": 8, **bad.get("image", {})}
    ann = {"id": 7, "image_id": 1, "segmentation": bad["segmentation"]}
    source = tmp_path / "labels.json"
    source.write_text(json.dumps({"images": [image], "annotations": [ann]}))
    with pytest.raises(ValueError, match=message) as info:
        clinician_labels.match([source], {"train": {"t/a.png": (8, 8)}}, use=("train",),
                               field="config.stage3.lesion_labels")
    assert str(source) in str(info.value) and "annotation id 7" in str(info.value)
    assert "\n" not in str(info.value)


def test_mask_png_of_the_wrong_size_names_the_file(tmp_path):
    from PIL import Image

    (tmp_path / "t").mkdir()
    Image.fromarray(np.ones((5, 8), np.uint8) * 255).save(tmp_path / "t" / "a.png")
    with pytest.raises(ValueError, match=r"a.png is \(5, 8\) \(H, W\) but its image is \(8, 8\)"):
        clinician_labels.match([tmp_path], {"train": {"t/a.png": (8, 8)}}, use=("train",),
                               field="config.stage3.lesion_labels")


@slow
def test_external_validation_on_a_folder_of_the_same_images_gives_the_same_report(trained, tmp_path):
    """The valid split laid out as a hospital's folder (labels.csv with split=test, a hardware
    column, mask PNGs mirroring the paths): `evaluate --external` scores it whole, and since
    these are the run's own test images with the same patients, every number equals the run's
    own evaluation."""
    import csv
    import shutil

    import PIL.Image

    from pcam_jax.data import mura

    run, _ = trained
    download = run.parent / "download"
    root = download / mura.MURA_ROOT
    entries, _, _ = mura.index_split(root, "valid")
    folder = tmp_path / "hospital"
    rows = []
    for n, e in enumerate(entries):
        (folder / e.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(download / e.path, folder / e.path)
        rows.append(dict(path=e.path, label=e.label, study=e.study_id, patient=e.patient_id,
                         body_part=e.body_part, split="test", hardware=n % 2))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sizes = {e.path: PIL.Image.open(download / e.path).size[::-1] for e in entries}
    for path, mask in lesions.load_lesion_masks(download / "lesions_valid.json", sizes).items():
        (folder / "masks" / path).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(mask * 255).save(folder / "masks" / path)
    assert pcam_jax_command("evaluate", "--workdir", run, "--external", folder, "--out", tmp_path / "ext") == 0
    own = json.loads((run / "eval" / "metrics.json").read_text())
    ext = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert ext["dataset"] == "folder" and ext["split"] == "test"
    for stage in ("stage1", "stage2", "stage3"):
        for level in ("image", "image_at_model_selection_threshold"):
            assert ext["classification"][stage][level]["counts"] == own["classification"][stage][level]["counts"]
            assert ext["classification"][stage][level]["auroc"] == pytest.approx(own["classification"][stage][level]["auroc"])
    assert ext["model_selection_thresholds"] == own["model_selection_thresholds"]
    for name, scores in own["localisation"].items():
        for key in ("n_images", "pointing_game", "pxap"):
            assert ext["localisation"][name][key] == pytest.approx(scores[key]), (name, key)
    hardware = ext["hardware"]["stage1"]
    assert hardware["n_hardware_free"] + hardware["n_hardware"] == len(rows)
    report = (tmp_path / "ext" / "report.md").read_text()
    assert "Shortcut reliance: hardware" in report and "model_selection operating point" in report


def test_fracatlas_stage3_set_is_the_seeded_choice_among_masked_train_images(capsys):
    from pcam_jax.configs import get_config
    from pcam_jax.data import fracatlas, pipeline

    tf = pipeline.tf
    paths = [f"images/{'Fractured' if n % 3 else 'Non_fractured'}/IMG{n:07d}.jpg" for n in range(30)]
    records = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "has_mask": ["/Fractured/" in p for p in paths], "lesion_labelled": [False] * 30})
    config = get_config("fracatlas")
    config.stage3.num_labelled, config.stage3.labelled_seed = 5, 7
    marked = {r["path"].decode() for r in clinician_labels.training_records(config, records, None)
              .as_numpy_iterator() if r["lesion_labelled"]}
    assert marked == fracatlas.labelled_paths([p for p in paths if "/Fractured/" in p], 5, seed=7)
    assert "5 of 20 masked train images labelled for stage 3" in capsys.readouterr().out
    config.stage3.lesion_labels = "labels.json"
    with pytest.raises(ValueError, match="num_labelled"):
        clinician_labels.training_records(config, records, None)


def test_fracatlas_stage3_set_can_be_the_top_of_a_ranked_list(tmp_path, capsys):
    """config.stage3.labelled_list: the first num_labelled listed masked train images, in rank order
    (not file order); a listed image that is no masked train image fails by name, or is dropped."""
    from pcam_jax.configs import get_config
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    paths = [f"images/{'Fractured' if n % 3 else 'Non_fractured'}/IMG{n:07d}.jpg" for n in range(30)]
    records = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "has_mask": ["/Fractured/" in p for p in paths], "lesion_labelled": [False] * 30})
    ranked = [paths[n] for n in (29, 4, 17, 1, 22, 8)]              # all fractured (n % 3 != 0)
    listing = tmp_path / "selected.csv"
    listing.write_text("path,score,rank\n" + "".join(f"{p},{1 - r / 10},{r + 1}\n" for r, p in
                                                     reversed(list(enumerate(ranked)))))
    config = get_config("fracatlas")
    config.stage3.num_labelled, config.stage3.labelled_list = 4, str(listing)
    clinician_labels.check_config(config)
    marked = {r["path"].decode() for r in clinician_labels.training_records(config, records, None)
              .as_numpy_iterator() if r["lesion_labelled"]}
    assert marked == set(ranked[:4])
    assert f"4 of 20 masked train images labelled for stage 3 (num_labelled=4, the first of {listing})" \
        in capsys.readouterr().out
    listing.write_text(f"path,rank\n{paths[3]},1\n{ranked[0]},2\n{ranked[1]},3\n")  # IMG0000003: not fractured
    with pytest.raises(clinician_labels.LabelMatchError, match=r"selected.csv: 1 listed .*IMG0000003"):
        clinician_labels.training_records(config, records, None)
    config.stage3.unmatched_labels = "drop"
    marked = {r["path"].decode() for r in clinician_labels.training_records(config, records, None)
              .as_numpy_iterator() if r["lesion_labelled"]}
    assert marked == set(ranked[:2]) and "1 listed non-train or unmasked images skipped" in capsys.readouterr().out
    synthetic = get_config("synthetic")
    synthetic.stage3.labelled_list = str(listing)
    with pytest.raises(ValueError, match="pcam-jax label --list"):
        clinician_labels.check_config(synthetic)
