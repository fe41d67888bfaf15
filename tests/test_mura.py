"""The MURA builder on pcam_jax/data/dummy_data (synthetic PNGs laid out exactly like MURA v1.1)."""

import pathlib
import random
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from pcam_jax.data import mura

DUMMY = pathlib.Path(mura.__file__).parent / "dummy_data"
ROOT = DUMMY / mura.MURA_ROOT
SPLITS = {"train": 7, "model_selection": 4, "valid": 4}
RGB_IMAGE = "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image2.png"
NO_SLASH_STUDY = "MURA-v1.1/train/XR_WRIST/patient00003/study1_negative"


class MuraBuilderTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's own checks: registration, info, generation from the manual dir, split sizes."""

    DATASET_CLASS = mura.Mura
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True  # manual download: nothing is fetched


def csv_lines(name):
    return (ROOT / name).read_text().splitlines()


def copy_tree(tmp_path) -> pathlib.Path:
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    return manual


def records(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return mura.prepare(DUMMY, tmp_path_factory.mktemp("tfds"))


def test_records_match_source_pngs(built):
    seen = set()
    for split in SPLITS:
        for ex in records(built, split):
            path = ex["path"].decode()
            seen.add(path)
            source = PIL.Image.open(DUMMY / path)
            pixels = np.asarray(source).astype(np.float64)
            if pixels.ndim == 3:  # RGB -> ITU-R 601-2 luma, written out here independently
                assert path == RGB_IMAGE
                expected = pixels @ np.array([0.299, 0.587, 0.114])
                assert np.abs(expected - pixels[..., 0]).max() > 10  # channels really differ
            else:
                expected = pixels
            assert ex["image"].shape == expected.shape + (1,)
            np.testing.assert_allclose(ex["image"][..., 0], expected, atol=1)
            parts = path.split("/")
            assert ex["label"] == int(parts[4].endswith("_positive"))
            assert ex["study_id"].decode() == "/".join(parts[:5])
            assert ex["patient_id"].decode() == parts[3]
            assert ex["body_part"].decode() == parts[2]
            assert ex["lesion_mask"].shape == (1, 1, 1) and not ex["lesion_mask"].any()
            assert not ex["has_mask"] and not ex["lesion_labelled"]
    listed = set(csv_lines("train_image_paths.csv") + csv_lines("valid_image_paths.csv"))
    assert seen == listed  # every listed image exactly once, nothing dropped
    assert RGB_IMAGE in seen


def test_trailing_slash_is_stripped():
    raw = [line.split(",")[0] for line in csv_lines("train_labeled_studies.csv")]
    assert any(p.endswith("/") for p in raw) and NO_SLASH_STUDY in raw  # the tree has both
    studies = mura.read_labeled_studies(mura.epath.Path(ROOT / "train_labeled_studies.csv"))
    assert set(studies) == {p.rstrip("/") for p in raw}
    assert studies[NO_SLASH_STUDY] == 0
    assert studies["MURA-v1.1/train/XR_WRIST/patient00001/study1_positive"] == 1


def test_model_selection_is_patient_disjoint_and_hash_defined(built):
    patients = {s: {ex["patient_id"].decode() for ex in records(built, s)} for s in SPLITS}
    assert patients["train"].isdisjoint(patients["model_selection"])
    train_patients = {line.split("/")[3] for line in csv_lines("train_image_paths.csv")}
    assert patients["train"] | patients["model_selection"] == train_patients
    assert patients["model_selection"] == {p for p in train_patients
                                           if mura.in_model_selection(p, 0.1)}
    assert len(patients["model_selection"]) == 2
    # A patient with studies in two body parts stays whole.
    parts = {ex["body_part"].decode() for ex in records(built, "model_selection")
             if ex["patient_id"] == b"patient00002"}
    assert parts == {"XR_WRIST", "XR_ELBOW"}
    # Hashing gives about the requested fraction, and a larger fraction only adds patients.
    ids = [f"patient{n:05d}" for n in range(10000)]
    share = np.mean([mura.in_model_selection(p, 0.1) for p in ids])
    assert abs(share - 0.1) < 0.015
    assert all(mura.in_model_selection(p, 0.3) for p in ids[:2000] if mura.in_model_selection(p, 0.1))


def test_split_membership_does_not_depend_on_csv_order(tmp_path, built):
    manual = copy_tree(tmp_path)
    paths_csv = manual / mura.MURA_ROOT / "train_image_paths.csv"
    lines = paths_csv.read_text().splitlines()
    random.Random(3).shuffle(lines)
    paths_csv.write_text("\n".join(lines) + "\n")
    shuffled = mura.prepare(manual, tmp_path / "tfds")
    for split in SPLITS:
        assert ({ex["path"] for ex in records(shuffled, split)}
                == {ex["path"] for ex in records(built, split)})


def test_missing_tree_lists_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="MURA-v1.1") as info:
        mura.prepare(tmp_path, tmp_path / "tfds")
    assert "train_image_paths.csv" in str(info.value)  # lists the layout it expects
    manual = copy_tree(tmp_path)
    (manual / mura.MURA_ROOT / "valid_labeled_studies.csv").unlink()
    with pytest.raises(FileNotFoundError) as info:
        mura.prepare(manual, tmp_path / "tfds")
    missing_section = str(info.value).split("\n\n")[0]
    assert "valid_labeled_studies.csv" in missing_section
    assert "train_labeled_studies.csv" not in missing_section


def test_missing_image_is_named(tmp_path):
    manual = copy_tree(tmp_path)
    gone = "MURA-v1.1/valid/XR_ELBOW/patient00007/study1_negative/image1.png"
    (manual / gone).unlink()
    with pytest.raises(FileNotFoundError, match="1 images listed") as info:
        mura.prepare(manual, tmp_path / "tfds")
    assert gone in str(info.value)


def flip_label(manual, study):
    csv_path = manual / mura.MURA_ROOT / f"{study.split('/')[1]}_labeled_studies.csv"
    lines = csv_path.read_text().splitlines()
    lines = [line[:-1] + str(1 - int(line[-1])) if line.split(",")[0].rstrip("/") == study
             else line for line in lines]
    csv_path.write_text("\n".join(lines) + "\n")


def test_label_disagreement_is_an_error_or_trusted_csv(tmp_path):
    manual = copy_tree(tmp_path)
    study = "MURA-v1.1/train/XR_ELBOW/patient00004/study1_positive"
    valid_study = "MURA-v1.1/valid/XR_ELBOW/patient00007/study1_negative"
    flip_label(manual, study)
    flip_label(manual, valid_study)
    with pytest.raises(ValueError, match="2 studies .* disagrees with their") as info:
        mura.prepare(manual, tmp_path / "tfds")
    assert f"{study}: csv 0, folder 1" in str(info.value)
    assert f"{valid_study}: csv 1, folder 0" in str(info.value)  # both splits, one message
    assert "trust_csv" in str(info.value)  # names the fix

    trusted = mura.prepare(manual, tmp_path / "tfds", label_policy="trust_csv")
    labels = {ex["path"].decode(): ex["label"] for ex in records(trusted, "train")}
    assert labels[f"{study}/image1.png"] == 0  # the CSV wins
    assert labels["MURA-v1.1/train/XR_ELBOW/patient00004/study2_negative/image1.png"] == 0
    assert trusted.info.metadata["label_disagreements"] == [
        dict(study_id=study, csv_label=0, folder_label=1),
        dict(study_id=valid_study, csv_label=1, folder_label=0)]
    reloaded = mura.builder(tmp_path / "tfds")
    assert reloaded.info.metadata["label_disagreements"][0]["study_id"] == study


def test_duplicate_and_malformed_csv_rows_are_named(tmp_path):
    manual = copy_tree(tmp_path)
    root = mura.epath.Path(manual / mura.MURA_ROOT)
    paths_csv = manual / mura.MURA_ROOT / "valid_image_paths.csv"
    lines = paths_csv.read_text().splitlines()
    paths_csv.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(ValueError, match=f"rows 1 and {len(lines) + 1} both list"):
        mura.index_split(root, "valid")
    paths_csv.write_text("\n".join(lines + ["MURA-v1.1/valid/XR_HAND/image1.png"]) + "\n")
    with pytest.raises(ValueError, match=f"valid_image_paths.csv row {len(lines) + 1}"):
        mura.index_split(root, "valid")
    studies_csv = manual / mura.MURA_ROOT / "valid_labeled_studies.csv"
    studies_csv.write_text("path,label\n" + studies_csv.read_text())
    with pytest.raises(ValueError, match="row 1: .*no header row"):
        mura.read_labeled_studies(mura.epath.Path(studies_csv))


def test_corrupt_png_is_named_or_skipped_and_reported(tmp_path):
    manual = copy_tree(tmp_path)
    bad = "MURA-v1.1/valid/XR_WRIST/patient00006/study1_positive/image2.png"
    data = (manual / bad).read_bytes()
    (manual / bad).write_bytes(data[: len(data) // 2])  # truncated PNG
    with pytest.raises(ValueError, match="corrupt or unreadable image") as info:
        mura.prepare(manual, tmp_path / "tfds")
    assert bad in str(info.value) and "skip_corrupt" in str(info.value)

    skipped = mura.prepare(manual, tmp_path / "tfds", skip_corrupt=True)
    assert skipped.info.splits["valid"].num_examples == SPLITS["valid"] - 1
    assert skipped.info.metadata["skipped_corrupt"] == {"train": [], "model_selection": [],
                                                        "valid": [bad]}
    assert bad not in {ex["path"].decode() for ex in records(skipped, "valid")}
    reloaded = mura.builder(tmp_path / "tfds")  # the report survives in metadata.json
    assert reloaded.info.metadata["skipped_corrupt"]["valid"] == [bad]


def test_config_per_fraction_and_bad_options(tmp_path):
    assert mura.builder(tmp_path).builder_config.name == "default"
    other = mura.builder(tmp_path, model_selection_fraction=0.25)
    assert other.builder_config.name == "ms0.25"
    assert other.builder_config.model_selection_fraction == 0.25
    with pytest.raises(ValueError, match="model_selection_fraction"):
        mura.builder(tmp_path, model_selection_fraction=1.0)
    with pytest.raises(ValueError, match="label_policy"):
        mura.builder(tmp_path, label_policy="folder")
