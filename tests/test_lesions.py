"""Lesion labels: every format against hand-computed masks, and every bad input."""

import json

import numpy as np
import PIL.Image
import pytest

from pcam_jax.data import lesions

A = "MURA-v1.1/valid/XR_WRIST/patient00006/study1_positive/image1.png"
B = "MURA-v1.1/valid/XR_ELBOW/patient00008/study1_positive/image1.png"
SIZES = {A: (6, 8), B: (20, 24)}  # (H, W)


def hand_box(h, w, rows, cols):
    mask = np.zeros((h, w), np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def point_in_triangle(x, y, triangle):
    """Same side of all three edges (sign of cross products), one point at a time."""
    signs = []
    for (xa, ya), (xb, yb) in zip(triangle, triangle[1:] + triangle[:1]):
        signs.append((xb - xa) * (y - ya) - (yb - ya) * (x - xa))
    return all(s > 0 for s in signs) or all(s < 0 for s in signs)


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- boxes and polygons


def test_box_marks_pixels_whose_centre_is_inside():
    mask = lesions.box_mask((2, 1, 5, 3), 6, 8, "t")
    np.testing.assert_array_equal(mask, hand_box(6, 8, (1, 3), (2, 5)))
    # Fractional edges: centres 1.5 and 2.5 lie in [1.2, 2.6); centre 0.5 lies in [0, 0.7).
    np.testing.assert_array_equal(lesions.box_mask((1.2, 0, 2.6, 0.7), 6, 8, "t"),
                                  hand_box(6, 8, (0, 1), (1, 3)))


@pytest.mark.parametrize("triangle", [
    [(2.0, 1.5), (21.0, 4.0), (7.5, 18.0)],
    [(23.9, 0.2), (0.3, 10.7), (16.25, 19.6)],
])
def test_triangle_matches_pointwise_reference(triangle):
    mask = lesions.polygon_mask([c for p in triangle for c in p], 20, 24, "t")
    expected = np.array([[point_in_triangle(j + 0.5, i + 0.5, triangle) for j in range(24)]
                         for i in range(20)])
    assert mask.dtype == np.uint8 and mask.shape == (20, 24)
    assert 50 < expected.sum() < 400  # a real triangle, not a degenerate one
    np.testing.assert_array_equal(mask, expected.astype(np.uint8))


def test_concave_polygon_equals_union_of_boxes():
    l_shape = [0, 0, 4, 0, 4, 2, 2, 2, 2, 5, 0, 5]  # an "L": integer corners, so exact boxes
    np.testing.assert_array_equal(lesions.polygon_mask(l_shape, 6, 8, "t"),
                                  hand_box(6, 8, (0, 2), (0, 4)) | hand_box(6, 8, (0, 5), (0, 2)))


# ---------------------------------------------------------------- the three formats


def test_csv_boxes_unite_rows_per_image(tmp_path):
    path = write_csv(tmp_path / "boxes.csv", [
        "path,x0,y0,x1,y1,reader", f"{A},0,0,2,2,dr_a", f"{A},4,3,8,6,dr_b", f"{B},10,5,11,6,dr_a"])
    masks = lesions.load_lesion_masks(path, SIZES)
    np.testing.assert_array_equal(
        masks[A], hand_box(6, 8, (0, 2), (0, 2)) | hand_box(6, 8, (3, 6), (4, 8)))
    np.testing.assert_array_equal(masks[B], hand_box(20, 24, (5, 6), (10, 11)))


def test_coco_polygons_and_boxes(tmp_path):
    triangle = [1.0, 1.0, 7.0, 1.0, 1.0, 5.0]
    coco = {
        "images": [{"id": 1, "file_name": A, "height": 6, "width": 8},
                   {"id": 2, "file_name": B, "height": 20, "width": 24}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": [triangle], "bbox": [0, 0, 8, 6]},
            {"id": 11, "image_id": 2, "bbox": [3, 4, 5, 2]},  # x, y, w, h
            {"id": 12, "image_id": 2, "segmentation": [], "bbox": [20, 18, 4, 2]},
        ],
    }
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(coco))
    masks = lesions.load_lesion_masks(path, SIZES)
    # Triangle (1,1),(7,1),(1,5): a centre (cx, cy) is inside iff cx > 1, cy > 1 and
    # (cx - 1) / 6 + (cy - 1) / 4 < 1. By hand, row by row (cy = row + 0.5):
    #   cy=1.5: cx < 6.25 -> cols 1..5;  cy=2.5: cx < 4.75 -> cols 1..4;
    #   cy=3.5: cx < 3.25 -> cols 1..2;  cy=4.5: cx < 1.75 -> col 1.
    expected_a = np.zeros((6, 8), np.uint8)
    for row, last_col in [(1, 5), (2, 4), (3, 2), (4, 1)]:
        expected_a[row, 1:last_col + 1] = 1
    np.testing.assert_array_equal(masks[A], expected_a)
    np.testing.assert_array_equal(
        masks[B], hand_box(20, 24, (4, 6), (3, 8)) | hand_box(20, 24, (18, 20), (20, 24)))


def test_png_folder_mirrors_image_paths(tmp_path):
    expected = hand_box(20, 24, (2, 9), (5, 11))
    file = tmp_path / B
    file.parent.mkdir(parents=True)
    PIL.Image.fromarray(expected * 255).convert("RGB").save(file)  # 0/255 RGB is accepted
    masks = lesions.load_lesion_masks(tmp_path, SIZES)
    assert list(masks) == [B]
    assert masks[B].dtype == np.uint8
    np.testing.assert_array_equal(masks[B], expected)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("row, message", [
    ("MURA-v1.1/valid/XR_WRIST/patient00006/study1_positive/image9.png,0,0,2,2", "not in the dataset"),
    (f"{A},0,0,9,2", "outside"),
    (f"{A},-1,0,2,2", "outside"),
    (f"{A},3,1,3,4", "zero area"),
    (f"{A},5,1,2,4", "negative width"),
    (f"{A},0,0,two,2", "must be numbers"),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_csv(tmp_path / "boxes.csv", ["path,x0,y0,x1,y1", f"{B},1,1,3,3", row])
    with pytest.raises(ValueError, match=message) as info:
        lesions.load_lesion_masks(path, SIZES)
    assert "boxes.csv line 3" in str(info.value)


def test_csv_without_header_is_rejected(tmp_path):
    path = write_csv(tmp_path / "boxes.csv", [f"{A},0,0,2,2"])
    with pytest.raises(ValueError, match="header row lacks"):
        lesions.load_lesion_masks(path, SIZES)


def test_unknown_image_suggests_close_match(tmp_path):
    path = write_csv(tmp_path / "b.csv", ["path,x0,y0,x1,y1", A.replace("image1", "imag1") + ",0,0,1,1"])
    with pytest.raises(ValueError, match="Did you mean"):
        lesions.load_lesion_masks(path, SIZES)


@pytest.mark.parametrize("annotation, message", [
    ({"id": 7, "image_id": 1, "bbox": [6, 0, 4, 2]}, "outside"),
    ({"id": 7, "image_id": 1, "segmentation": [[0, 0, 9, 0, 0, 4]]}, "outside"),
    ({"id": 7, "image_id": 1, "segmentation": [[1, 1, 5, 1, 3, 1]]}, "zero area"),
    ({"id": 7, "image_id": 1, "bbox": [1, 1, 0, 3]}, "zero area"),
    ({"id": 7, "image_id": 1, "segmentation": [[1, 1, 5, 1]]}, "at least 3"),
    ({"id": 7, "image_id": 1, "segmentation": {"counts": [1, 2], "size": [6, 8]}}, "RLE"),
    ({"id": 7, "image_id": 3, "bbox": [0, 0, 1, 1]}, "not in the dataset"),
    ({"id": 7, "image_id": 4, "bbox": [0, 0, 1, 1]}, "is not in 'images'"),
    ({"id": 7, "image_id": 5, "bbox": [0, 0, 1, 1]}, "but the image is"),
    ({"id": 7, "image_id": 1}, "neither"),
])
def test_coco_bad_annotations_name_the_id(tmp_path, annotation, message):
    coco = {"images": [{"id": 1, "file_name": A, "height": 6, "width": 8},
                       {"id": 3, "file_name": "elsewhere/x.png", "height": 6, "width": 8},
                       {"id": 5, "file_name": B, "height": 24, "width": 20}],
            "annotations": [annotation]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=message) as info:
        lesions.load_lesion_masks(path, SIZES)
    assert "c.json annotation id 7" in str(info.value)


def test_png_folder_bad_masks(tmp_path):
    def write(path, array):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(array).save(tmp_path / path)

    write(A, np.zeros((6, 8), np.uint8))
    with pytest.raises(ValueError, match="zero area") as info:
        lesions.load_lesion_masks(tmp_path, SIZES)
    assert A in str(info.value)
    write(A, np.ones((8, 6), np.uint8))
    with pytest.raises(ValueError, match=r"is \(8, 6\) \(H, W\) but its image is \(6, 8\)"):
        lesions.load_lesion_masks(tmp_path, SIZES)
    (tmp_path / A).unlink()
    write("MURA-v1.1/valid/other.png", np.ones((6, 8), np.uint8))
    with pytest.raises(ValueError, match="other.png.*not in the dataset"):
        lesions.load_lesion_masks(tmp_path, SIZES)


def test_unknown_source_kind(tmp_path):
    (tmp_path / "labels.txt").write_text("x")
    with pytest.raises(ValueError, match="folder of mask PNGs"):
        lesions.load_lesion_masks(tmp_path / "labels.txt", SIZES)
    with pytest.raises(FileNotFoundError):
        lesions.load_lesion_masks(tmp_path / "missing.csv", SIZES)


# ---------------------------------------------------------------- paths and edges (issue 20)


def test_png_mask_labels_the_image_of_any_extension(tmp_path):
    sizes = {"a/x.jpg": (6, 8), "b/y.dcm": (20, 24)}
    expected = hand_box(6, 8, (1, 4), (2, 5))
    for name, mask in (("a/x.png", expected), ("b/y.png", hand_box(20, 24, (0, 2), (0, 2)))):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(mask * 255).save(tmp_path / name)
    masks = lesions.load_lesion_masks(tmp_path, sizes)
    assert sorted(masks) == ["a/x.jpg", "b/y.dcm"]
    np.testing.assert_array_equal(masks["a/x.jpg"], expected)
    with pytest.raises(ValueError, match=r"a/x.dcm or a/x.jpg"):  # two images it could label
        lesions.load_lesion_masks(tmp_path, {**sizes, "a/x.dcm": (6, 8)})


def test_unmatched_entry_names_the_nearest_path(tmp_path):
    PIL.Image.fromarray(np.ones((6, 8), np.uint8)).save(tmp_path / "image1.png")
    unknown = []
    assert lesions.load_lesion_masks(tmp_path, SIZES, unknown=unknown) == {}
    assert unknown == [f"mask {tmp_path / 'image1.png'}: image1.png (nearest: {A})"]


def test_coco_edge_vertices_are_clipped_and_outside_polygons_skipped_and_counted(tmp_path):
    """y = H + 5e-13 is the bottom edge (exporter rounding): clipped, the mask as if y = H;
    y = H + 3 is outside: with a report it is skipped and counted, the rest still loads."""
    on_edge = [1.2, 1.1, 7.3, 0.9, 4.1, 6.0 + 5e-13]  # no pixel centre on an edge
    outside = [1.2, 1.1, 7.3, 0.9, 4.1, 9.0]
    coco = {"images": [{"id": 1, "file_name": A, "height": 6, "width": 8},
                       {"id": 2, "file_name": B, "height": 20, "width": 24}],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": [on_edge]},
                            {"id": 2, "image_id": 1, "segmentation": [outside]},
                            {"id": 3, "image_id": 2, "bbox": [3, 4, 5, 2]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    report = lesions.LabelReport()
    masks = lesions.load_lesion_masks(path, SIZES, report=report)
    triangle = [(1.2, 1.1), (7.3, 0.9), (4.1, 6.0)]
    expected = np.array([[point_in_triangle(j + 0.5, i + 0.5, triangle) for j in range(8)]
                         for i in range(6)], np.uint8)
    np.testing.assert_array_equal(masks[A], expected)
    np.testing.assert_array_equal(masks[B], hand_box(20, 24, (4, 6), (3, 8)))
    assert [c.split(": ")[0] for c in report.clipped] == [f"{path} annotation id 1"]
    assert len(report.skipped) == 1 and f"{path} annotation id 2" in report.skipped[0]
    assert "outside" in report.skipped[0]
    assert report.summary().startswith("1 annotation(s) clipped to the image edge")
    with pytest.raises(ValueError, match="annotation id 2: polygon: lies outside"):
        lesions.load_lesion_masks(path, SIZES)  # without a report a bad annotation stops the load
