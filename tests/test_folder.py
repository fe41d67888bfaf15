"""The radiograph_folder builder on a tiny folder of 8/16-bit PNGs and DICOMs written here."""

import csv
import random
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from pcam_jax.configs import tiny
from pcam_jax.data import folder, mura, pipeline
from pcam_jax.data.radiographs import RadiographReadError
from tests import dicom_files

H, W = 16, 24
KINDS = ("png8", "png16", "dcm_mono1_window", "dicom_as_tif")
PATIENTS = [f"p{n:02d}" for n in range(12)]


def pattern(seed: int) -> np.ndarray:
    """A distinct (H, W) int pattern per image, values 0..255."""
    rows, cols = np.mgrid[0:H, 0:W]
    return (seed * 37 + rows * 11 + cols * 5) % 256


def write_image(path, kind: str, seed: int) -> np.ndarray:
    """Writes one image of ``kind``; returns the uint8 record it must become, worked by hand."""
    v = pattern(seed)
    if kind == "png8":
        PIL.Image.fromarray(v.astype(np.uint8)).save(path)
        return v
    if kind == "png16":  # v * 257: the 16-bit twin of v, far above 255
        PIL.Image.fromarray((v * 257).astype(np.uint16)).save(path)
        return v
    if kind == "dcm_mono1_window":  # 12 bits, window c=2048 w=1001, MONOCHROME1
        stored = v * 16
        ds = dicom_files.dataset(stored, bits_stored=12, photometric="MONOCHROME1")
        ds.WindowCenter, ds.WindowWidth = 2048, 1001
        dicom_files.write(ds, path)
        return np.round(255 * (1 - np.clip((stored - 2047.5) / 1000 + 0.5, 0, 1)))
    stored = v * 4  # dicom_as_tif: 10 bits, MONOCHROME2, a TIFF-looking preamble
    dicom_files.write_tiff_looking(dicom_files.dataset(stored, bits_stored=10), path)
    return np.round(255 * stored / 1023)


def make_folder(root, *, split_of=None, columns=("path", "label", "study", "patient", "body_part")):
    """12 patients x 1 study x 2 images cycling through KINDS; returns {path: expected row}."""
    root.mkdir(parents=True, exist_ok=True)
    expected, rows = {}, []
    for n, patient in enumerate(PATIENTS):
        for k in range(2):
            seed = 2 * n + k
            kind = KINDS[seed % len(KINDS)]
            suffix = {"png8": ".png", "png16": ".png", "dcm_mono1_window": ".dcm",
                      "dicom_as_tif": ".tif"}[kind]
            rel = f"{patient}/s1/img{k}{suffix}"
            (root / patient / "s1").mkdir(parents=True, exist_ok=True)
            pixels = write_image(root / rel, kind, seed)
            label = n % 2
            row = dict(path=rel, label=[["normal", "0"], ["Abnormal", "1"]][label][k],
                       study=f"{patient}/s1", patient=patient,
                       body_part="XR_HAND" if n < 6 else "XR_KNEE")
            if split_of is not None:
                row["split"] = split_of(patient)
            rows.append({c: row[c] for c in (*columns, *(["split"] if split_of else []))})
            expected[rel] = dict(row, pixels=pixels, label=label, kind=kind)
    write_csv(root / folder.DEFAULT_CSV, rows)
    return expected


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def records(built, split):
    return list(tfds.as_numpy(built.as_dataset(split=split)))


FRACTIONS = dict(model_selection_fraction=0.25, test_fraction=0.25)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "radiographs"
    return root, make_folder(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def built(tree, data_dir):
    return folder.prepare(tree[0], data_dir, **FRACTIONS)


def test_records_match_the_files_read_by_hand(tree, built):
    _, expected = tree
    seen = {}
    for split in folder.SPLITS:
        for ex in records(built, split):
            path = ex["path"].decode()
            seen[path] = split
            want = expected[path]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (H, W, 1)
            np.testing.assert_allclose(ex["image"][..., 0], want["pixels"], atol=1, err_msg=path)
            assert ex["label"] == want["label"]
            assert ex["study_id"].decode() == want["study"]
            assert ex["patient_id"].decode() == want["patient"]
            assert ex["body_part"].decode() == want["body_part"]
            assert ex["lesion_mask"].shape == (1, 1, 1) and not ex["lesion_mask"].any()
            assert not ex["has_mask"] and not ex["lesion_labelled"]
    assert set(seen) == set(expected)  # every row exactly once
    # The 16-bit PNGs and the DICOMs were not clipped: their records span the full 8-bit range.
    for kind in KINDS:
        assert max(expected[p]["pixels"].max() for p in expected if expected[p]["kind"] == kind) > 200
    read_as = built.info.metadata["read_as"]
    assert read_as == {"PNG L 8-bit bit_depth": 6, "PNG I;16 16-bit bit_depth": 6,
                       "DICOM MONOCHROME1 12-bit window LINEAR": 6,
                       "DICOM MONOCHROME2 10-bit stored_range": 6}


def test_hashed_splits_are_patient_disjoint_and_order_free(tree, built, tmp_path):
    root, _ = tree
    patients = {s: {ex["patient_id"].decode() for ex in records(built, s)} for s in folder.SPLITS}
    test = {p for p in PATIENTS if folder.in_test(p, 0.25)}
    selection = {p for p in PATIENTS if p not in test and mura.in_model_selection(p, 0.25)}
    assert patients == {"test": test, "model_selection": selection,
                        "train": set(PATIENTS) - test - selection}
    assert all(patients.values())  # the chosen fractions leave every split non-empty
    assert built.info.metadata["split_policy"] == "hash"
    assert built.info.metadata["num_patients"] == {s: len(p) for s, p in patients.items()}
    # Hashing: about the requested share, independent of model selection's hash.
    ids = [f"patient{n:05d}" for n in range(10000)]
    in_test = np.array([folder.in_test(p, 0.2) for p in ids])
    in_ms = np.array([mura.in_model_selection(p, 0.1) for p in ids])
    assert abs(in_test.mean() - 0.2) < 0.015 and abs((in_test & in_ms).mean() - 0.02) < 0.006
    # Shuffled rows give the same splits.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    rows = read_csv(copy / folder.DEFAULT_CSV)
    random.Random(0).shuffle(rows)
    write_csv(copy / folder.DEFAULT_CSV, rows)
    shuffled = folder.prepare(copy, tmp_path / "tfds", **FRACTIONS)
    for split in folder.SPLITS:
        assert ({ex["path"] for ex in records(shuffled, split)}
                == {ex["path"] for ex in records(built, split)})


def test_split_column_and_patient_leak(tmp_path):
    given = {p: "test" if p in ("p00", "p01") else "train" for p in PATIENTS}
    root = tmp_path / "split"
    make_folder(root, split_of=given.get)
    built = folder.prepare(root, tmp_path / "tfds", model_selection_fraction=0.3)
    patients = {s: {ex["patient_id"].decode() for ex in records(built, s)} for s in folder.SPLITS}
    assert patients["test"] == {"p00", "p01"}  # as written, not hashed
    carved = {p for p in PATIENTS[2:] if mura.in_model_selection(p, 0.3)}
    assert carved and patients["model_selection"] == carved
    assert patients["train"] == set(PATIENTS[2:]) - carved
    assert built.info.metadata["split_policy"] == "column"
    rows = read_csv(root / folder.DEFAULT_CSV)
    rows[5]["split"] = "model_selection"  # p02's second image; its first stays in train
    write_csv(root / folder.DEFAULT_CSV, rows)
    with pytest.raises(ValueError, match=r"1 patients have rows in more than one split: "
                                         r"p02 \(model_selection/train\)"):
        folder.prepare(root, tmp_path / "tfds2")
    rows[5]["split"] = "valid"
    write_csv(root / folder.DEFAULT_CSV, rows)
    with pytest.raises(ValueError, match=r"labels\.csv row 7: split 'valid'; expected one of"):
        folder.prepare(root, tmp_path / "tfds3")


def test_default_study_and_patient(tmp_path):
    root = tmp_path / "bare"
    make_folder(root, columns=("path", "label"))
    entries, patients_from = folder.read_entries(root / folder.DEFAULT_CSV)
    assert patients_from == "path"
    assert all(e.study_id == e.path == e.patient_id for e in entries)
    assert {e.body_part for e in entries} == {folder.UNSPECIFIED_BODY_PART}
    rows = [dict(path=r["path"], label=r["label"], study=r["path"].rsplit("/", 1)[0])
            for r in read_csv(root / folder.DEFAULT_CSV)]
    write_csv(root / folder.DEFAULT_CSV, rows)
    entries, patients_from = folder.read_entries(root / folder.DEFAULT_CSV)
    assert patients_from == "study" and all(e.patient_id == e.study_id for e in entries)
    assert [e.label for e in entries] == [n % 2 for n in range(12) for _ in range(2)]


def test_bad_trees_name_the_file_and_row(tmp_path, tree):
    root = tmp_path / "bad"
    shutil.copytree(tree[0], root)
    csv_path = root / folder.DEFAULT_CSV
    rows = read_csv(csv_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder.prepare(tmp_path / "nowhere", tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match=r"other\.csv not found; write a CSV with a header"):
        folder.prepare(root, tmp_path / "tfds", csv_name="other.csv")
    write_csv(csv_path, [{"file": r["path"], "label": r["label"]} for r in rows])
    with pytest.raises(ValueError, match=r"labels\.csv: no column path in the header row"):
        folder.prepare(root, tmp_path / "tfds")
    write_csv(csv_path, [dict(r, label="maybe" if i == 3 else r["label"]) for i, r in enumerate(rows)])
    with pytest.raises(ValueError, match=r"labels\.csv row 5: label 'maybe'; expected 0, 1"):
        folder.prepare(root, tmp_path / "tfds")
    write_csv(csv_path, rows + [dict(rows[0], path="p99/s1/gone.png")])
    with pytest.raises(FileNotFoundError, match=r"1 images listed .* missing .*\n  row 26: "
                                                r"p99/s1/gone\.png"):
        folder.prepare(root, tmp_path / "tfds")
    write_csv(csv_path, rows)
    assert rows[0]["path"].endswith(".png")
    (root / rows[0]["path"]).write_bytes(b"not an image at all")
    with pytest.raises(RadiographReadError, match=rf"labels\.csv row 2: .*{rows[0]['path']}: not "
                                                  r"an image.*skip_corrupt=True"):
        folder.prepare(root, tmp_path / "tfds_corrupt", **FRACTIONS)
    skipped = folder.prepare(root, tmp_path / "tfds_skip", skip_corrupt=True, **FRACTIONS)
    listed = [p for paths in skipped.info.metadata["skipped_corrupt"].values() for p in paths]
    assert listed == [rows[0]["path"]]
    assert sum(len(records(skipped, s)) for s in folder.SPLITS) == len(rows) - 1


def test_pipeline_reads_it_and_a_changed_csv_is_refused(tree, built, data_dir, tmp_path):
    root, expected = tree
    config = tiny.get_config()
    config.data.dataset = "folder"
    config.data.folder_root = str(root)
    config.data.model_selection_fraction = FRACTIONS["model_selection_fraction"]
    config.data.folder_test_fraction = FRACTIONS["test_fraction"]
    total = sum(pipeline.num_examples(config, s, data_dir) for s in folder.SPLITS)
    assert total == len(expected)
    test_paths = {r["path"] for r in tfds.as_numpy(pipeline.load_records(config, "test", data_dir))}
    assert test_paths == {ex["path"] for ex in records(built, "test")}
    # Another folder prepared into the same data_dir would silently reuse this one: refused.
    other = tmp_path / "other"
    shutil.copytree(root, other)
    rows = read_csv(other / folder.DEFAULT_CSV)
    write_csv(other / folder.DEFAULT_CSV, rows[:-2])
    with pytest.raises(ValueError, match="already holds a radiograph_folder dataset built from"):
        folder.prepare(other, data_dir, **FRACTIONS)
    config.data.folder_root = str(other)
    with pytest.raises(ValueError, match="delete that directory to rebuild"):
        pipeline.num_examples(config, "train", data_dir)
    config.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="pcam-jax prepare folder"):
        pipeline.num_examples(config, "train")
