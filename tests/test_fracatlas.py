"""The fracatlas builder on a handful of real FracAtlas files copied from ../shared/fracatlas.

Nothing of FracAtlas is committed: the tests copy six files into a temporary tree laid out like
the download (with one dataset.csv row made to disagree with its folder and one annotation moved
truly outside its image) and skip where the copy is absent (set PCAM_JAX_FRACATLAS to its
FracAtlas folder elsewhere). Masks are checked against matplotlib's point-in-polygon test, an
implementation independent of `pcam_jax.data.lesions`.
"""

import csv
import json
import os
import pathlib
import shutil

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from pcam_jax.data import fracatlas

SOURCE = pathlib.Path(os.environ.get(
    "PCAM_JAX_FRACATLAS", pathlib.Path(__file__).resolve().parents[1].parent / "shared/fracatlas/FracAtlas"))
pytestmark = pytest.mark.skipif(not (SOURCE / "dataset.csv").exists(),
                                reason=f"FracAtlas copy not found at {SOURCE} (set PCAM_JAX_FRACATLAS)")

FILES = {  # name: (folder, why it is here)
    "IMG0000019.jpg": ("Fractured", "plain fracture, 2304x2880, RGB JPEG"),
    "IMG0002342.jpg": ("Fractured", "polygon reaching y = 2880 + 5e-13: clipped"),
    "IMG0002628.jpg": ("Fractured", "EXIF orientation 8: COCO's 454x373 is the turned frame"),
    "IMG0000439.jpg": ("Non_fractured", "EXIF orientation 8, not fractured"),
    "IMG0000202.jpg": ("Non_fractured", "hardware without fracture; its csv row made to say fractured"),
    "IMG0004028.jpg": ("Non_fractured", "cut short: skipped"),
}
DISAGREEING, OUTSIDE_ID = "IMG0000202.jpg", 99999


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("download") / "FracAtlas"
    for name, (folder, _) in FILES.items():
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE / "images" / folder / name, root / "images" / folder / name)
    for folder in fracatlas.IMAGE_FOLDERS:
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    with open(SOURCE / fracatlas.TABLE, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r["image_id"] in FILES]
        fields = reader.fieldnames
    for row in rows:
        if row["image_id"] == DISAGREEING:
            row["fractured"] = "1"
    with open(root / fracatlas.TABLE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    coco = json.loads((SOURCE / fracatlas.COCO).read_text())
    images = [i for i in coco["images"] if i["file_name"] in FILES]
    ids = {i["id"] for i in images}
    annotations = [a for a in coco["annotations"] if a["image_id"] in ids]
    first = next(i for i in images if i["file_name"] == "IMG0000019.jpg")
    annotations.append({"id": OUTSIDE_ID, "image_id": first["id"], "category_id": 0,
                        "segmentation": [[10, 10, 60, 10, 60, first["height"] + 40.0]]})
    (root / fracatlas.COCO).parent.mkdir(parents=True)
    (root / fracatlas.COCO).write_text(json.dumps(dict(coco, images=images, annotations=annotations)))
    return root


def fractions_filling_every_split(names):
    """(model_selection, test) fractions that give each split one of ``names`` at least."""
    grid = [round(0.05 * k, 2) for k in range(1, 19)]
    for test in grid:
        for selection in grid:
            if {fracatlas.split_of(n, selection, test) for n in names} == set(fracatlas.SPLITS):
                return selection, test
    raise AssertionError("no fractions fill every split")


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    readable = [n for n in FILES if n != "IMG0004028.jpg"]
    selection, test = fractions_filling_every_split(readable)
    builder = fracatlas.prepare(tree.parent, tmp_path_factory.mktemp("data"),
                                model_selection_fraction=selection, test_fraction=test)
    records = {}
    for split in builder.info.splits:
        for r in builder.as_dataset(split=split).as_numpy_iterator():
            records[r["path"].decode()] = dict(r, split=split)
    return builder, records


def reference_mask(polygons, height, width):
    """Pixel centres inside any polygon (even-odd per polygon, united), by matplotlib."""
    from matplotlib.path import Path

    rows, cols = np.mgrid[0:height, 0:width]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    mask = np.zeros(height * width, bool)
    for xy in polygons:
        points = np.clip(np.asarray(xy, float).reshape(-1, 2), 0, [width, height])
        mask |= Path(points).contains_points(centres)
    return mask.reshape(height, width)


def coco_polygons(tree, name):
    coco = json.loads((tree / fracatlas.COCO).read_text())
    image = next(i for i in coco["images"] if i["file_name"] == name)
    return image, [p for a in coco["annotations"] if a["image_id"] == image["id"] and a["id"] != OUTSIDE_ID
                   for p in a["segmentation"]]


def test_every_readable_file_is_one_record_labelled_by_its_folder(built):
    builder, records = built
    meta = builder.info.metadata
    assert sorted(records) == sorted(f"images/{folder}/{name}" for name, (folder, _) in FILES.items()
                                     if name != "IMG0004028.jpg")
    assert [s.split(":")[0].endswith("IMG0004028.jpg") for s in meta["skipped_unreadable"]] == [True]
    for path, record in records.items():
        assert record["label"] == (1 if "/Fractured/" in path else 0)
        assert record["has_mask"] == (record["label"] == 1)
        assert record["split"] == fracatlas.split_of(path.rsplit("/", 1)[1], meta["model_selection_fraction"],
                                                     meta["test_fraction"])
    assert meta["label_disagreements"] == [dict(path=f"images/Non_fractured/{DISAGREEING}",
                                                folder_label=0, csv_fractured="1")]


def test_body_part_and_hardware_come_from_the_table(built, tree):
    _, records = built
    with open(tree / fracatlas.TABLE, newline="") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    expected_part = {"IMG0000019.jpg": b"HAND", "IMG0002342.jpg": b"LEG", "IMG0002628.jpg": b"SHOULDER",
                     "IMG0000439.jpg": b"MIXED", "IMG0000202.jpg": b"LEG"}  # read off dataset.csv by hand
    for path, record in records.items():
        name = path.rsplit("/", 1)[1]
        assert record["body_part"] == expected_part[name]
        assert record["hardware"].decode() == rows[name]["hardware"]
    assert records[f"images/Non_fractured/{DISAGREEING}"]["hardware"] == b"1"


def test_upright_files_are_stored_as_they_are_and_exif_ones_turned(built, tree):
    _, records = built
    image, _ = coco_polygons(tree, "IMG0002628.jpg")
    for name in ("IMG0002628.jpg", "IMG0000439.jpg"):
        folder = FILES[name][0]
        record = records[f"images/{folder}/{name}"]
        with PIL.Image.open(tree / "images" / folder / name) as source:
            upright = np.asarray(PIL.ImageOps.exif_transpose(source).convert("L"))
        assert source.size[::-1] != upright.shape  # orientation 8 swaps height and width
        np.testing.assert_array_equal(record["image"][..., 0], upright)
    assert records["images/Fractured/IMG0002628.jpg"]["image"].shape[:2] == (image["height"], image["width"])
    plain = records["images/Fractured/IMG0000019.jpg"]
    assert plain["image"].shape == (2880, 2304, 1)
    assert (tree / "images/Fractured/IMG0000019.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("name", ["IMG0000019.jpg", "IMG0002342.jpg", "IMG0002628.jpg"])
def test_masks_equal_an_independent_rasteriser(built, tree, name):
    _, records = built
    image, polygons = coco_polygons(tree, name)
    mask = records[f"images/Fractured/{name}"]["lesion_mask"][..., 0]
    assert mask.shape == (image["height"], image["width"])
    expected = reference_mask(polygons, image["height"], image["width"])
    assert 50 < expected.sum() < 0.05 * expected.size  # a real fracture, small
    np.testing.assert_array_equal(mask > 0, expected)


def test_edge_vertices_are_clipped_and_an_outside_polygon_skipped_both_counted(built):
    builder, _ = built
    notes = builder.info.metadata["annotations"]
    assert [c.rsplit("annotation id ", 1)[1].split(":")[0] for c in notes["clipped"]] == ["243"]
    assert len(notes["skipped"]) == 1 and f"annotation id {OUTSIDE_ID}" in notes["skipped"][0]
    assert "outside" in notes["skipped"][0]


def test_stage3_labelled_set_is_a_seeded_nested_choice():
    paths = [f"images/Fractured/IMG{n:07d}.jpg" for n in range(400)]
    chosen = fracatlas.labelled_paths(paths, 100, seed=0)
    assert len(chosen) == 100 and chosen <= set(paths)
    assert chosen == fracatlas.labelled_paths(list(reversed(paths)), 100, seed=0)  # order-free
    assert fracatlas.labelled_paths(paths, 50, seed=0) <= chosen                   # nested in N
    assert len(chosen & fracatlas.labelled_paths(paths, 100, seed=1)) < 50         # the seed matters
    assert fracatlas.labelled_paths(paths, -1, seed=0) == set(paths)


def test_splits_are_hashed_fractions():
    names = [f"IMG{n:07d}.jpg" for n in range(4000)]
    splits = [fracatlas.split_of(n, 0.15, 0.2) for n in names]
    share = {s: splits.count(s) / len(names) for s in fracatlas.SPLITS}
    assert abs(share["test"] - 0.2) < 0.02
    assert abs(share["model_selection"] - 0.8 * 0.15) < 0.02


def test_incomplete_tree_lists_what_is_missing(tmp_path):
    (tmp_path / "images" / "Fractured").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Non_fractured") as info:
        fracatlas.find_root(tmp_path)
    assert "dataset.csv" in str(info.value) and "COCO_fracture_masks.json" in str(info.value)
