"""The labels file of `pcam-jax label` (COCO, atomic, one writer) and the page's server routes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pcam_jax.data import lesions
from pcam_jax.labelling import app as app_lib, images as images_lib, store as store_lib

ITEMS = [("a/x1.png", 6, 8), ("a/x2.png", 5, 5), ("b/x3.png", 4, 4)]
BOX = {"type": "box", "bbox": [2, 1, 3, 2]}                  # columns 2-4 of rows 1-2
TRIANGLE = {"type": "polygon", "points": [0, 0, 4, 0, 0, 4]}  # pixel centres with x + y < 4


def test_shapes_become_the_coco_that_stage_3_reads(tmp_path):
    store = store_lib.LabelStore(tmp_path / "labels.json", ITEMS)
    store.set(0, None, [BOX, TRIANGLE])
    store.set(1, "no_lesion", [])
    store.set(2, "skipped", [])
    masks = lesions.masks_from_coco(tmp_path / "labels.json", {p: (h, w) for p, h, w in ITEMS})
    expected = np.zeros((6, 8), np.uint8)
    expected[1:3, 2:5] = 1
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]:  # i + j < 3
        expected[i, j] = 1
    assert list(masks) == ["a/x1.png"]  # no lesion / skipped: in images, no annotation, no mask
    np.testing.assert_array_equal(masks["a/x1.png"], expected)
    coco = json.loads((tmp_path / "labels.json").read_text())
    assert [i["pcam_status"] for i in coco["images"]] == ["labelled", "no_lesion", "skipped"]
    assert [a["area"] for a in coco["annotations"]] == [6.0, 8.0]
    assert store.progress() == {"done": 3, "total": 3, "labelled": 1, "no_lesion": 1, "skipped": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "labels.json.lock"]  # no temp file left
    store.close()
    assert not (tmp_path / "labels.json.lock").exists()


def test_a_restart_resumes_and_keeps_other_images_entries(tmp_path):
    path = tmp_path / "labels.json"
    store = store_lib.LabelStore(path, ITEMS)
    store.set(0, None, [BOX])
    store.set(1, "skipped", [])
    store.close()
    store = store_lib.LabelStore(path, ITEMS[1:] + [("c/x4.png", 3, 3)])  # a new round: x1 not listed
    assert [(it["status"], it["shapes"]) for it in store.items] == [("skipped", []), (None, []), (None, [])]
    store.set(1, None, [TRIANGLE])
    store.close()
    masks = lesions.masks_from_coco(path, {p: (h, w) for p, h, w in ITEMS})
    assert sorted(masks) == ["a/x1.png", "b/x3.png"]  # the first round's box is still there
    store = store_lib.LabelStore(path, ITEMS)
    assert store.items[0]["shapes"] == [{"type": "box", "bbox": [2.0, 1.0, 3.0, 2.0]}]
    store.close()


def test_bad_shapes_are_refused_with_the_image_named(tmp_path):
    store = store_lib.LabelStore(tmp_path / "labels.json", ITEMS)
    with pytest.raises(ValueError, match=r"a/x1.png shape 1: .*outside"):
        store.set(0, None, [{"type": "box", "bbox": [5, 0, 4, 2]}])
    with pytest.raises(ValueError, match="at least 3"):
        store.set(0, None, [{"type": "polygon", "points": [0, 0, 2, 2]}])
    with pytest.raises(ValueError, match="covers no pixel"):
        store.set(0, None, [{"type": "box", "bbox": [1.6, 1.6, 0.2, 0.2]}])
    with pytest.raises(ValueError, match="delete them first"):
        store.set(0, "no_lesion", [BOX])
    assert not (tmp_path / "labels.json").exists()  # nothing was written
    store.close()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    path = tmp_path / "labels.json"
    store = store_lib.LabelStore(path, ITEMS)
    with pytest.raises(store_lib.LabelFileLocked, match=rf"process {os.getpid()}.*another --out"):
        store_lib.LabelStore(path, ITEMS)
    store.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (tmp_path / "labels.json.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    store_lib.LabelStore(path, ITEMS).close()


class _Images:
    sizes = {p: (h, w) for p, h, w in ITEMS}

    def pixels(self, path):
        h, w = self.sizes[path]
        return np.arange(h * w, dtype=np.uint8).reshape(h, w)

    def png(self, path):
        return images_lib.encode_png(self.pixels(path))


def test_routes_serve_only_listed_images_and_save_changes(tmp_path):
    store = store_lib.LabelStore(tmp_path / "labels.json", ITEMS)
    suggested = []
    app = app_lib.create_app(store, _Images(), suggest=lambda px: suggested.append(px.shape) or np.ones(px.shape))
    client = app.test_client()
    import io
    import PIL.Image
    served = np.asarray(PIL.Image.open(io.BytesIO(client.get("/image/0.png").data)))
    np.testing.assert_array_equal(served, _Images().pixels("a/x1.png"))
    for url in ("/image/3.png", "/image/-1.png", "/image/..%2f..%2fetc%2fpasswd", "/static/../app.py",
                "/static/..%2fapp.py", "/static/%2e%2e/store.py", "/a/x1.png", "/image/a/x1.png"):
        assert client.get(url).status_code == 404, url
    assert client.get("/static/label.js").status_code == 200
    rgba = PIL.Image.open(io.BytesIO(client.get("/suggestion/1.png").data))
    assert rgba.mode == "RGBA" and rgba.size == (5, 5) and suggested == [(5, 5)]
    answer = client.put("/api/labels/0", json={"status": None, "shapes": [BOX]})
    assert answer.status_code == 200 and answer.json["progress"]["done"] == 1
    bad = client.put("/api/labels/0", json={"shapes": [{"type": "circle"}]})
    assert bad.status_code == 400 and "a/x1.png" in bad.json["error"]
    state = client.get("/api/state").json
    assert state["items"][0]["status"] == "labelled" and state["suggestion"] is True
    store.close()


def test_file_images_stay_under_their_root(tmp_path):
    (tmp_path / "root").mkdir()
    PIL = pytest.importorskip("PIL.Image")
    PIL.fromarray(np.full((3, 4), 7, np.uint8)).save(tmp_path / "root" / "x.png")
    PIL.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "outside.png")
    found = images_lib.FileImages(tmp_path / "root", ["x.png"])
    assert found.sizes == {"x.png": (3, 4)}
    with pytest.raises(ValueError, match="leads outside --image_root"):
        images_lib.FileImages(tmp_path / "root", ["../outside.png"])


def test_the_oracle_labellers_coco_reads_back_as_the_masks():
    rng = np.random.default_rng(0)
    masks = {f"img{k}": (rng.random((7, 9)) < 0.3).astype(np.uint8) for k in range(4)}
    masks["img0"][:, -1] = 1   # runs touching the right border
    import pathlib, tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "oracle.json"
        path.write_text(json.dumps(store_lib.coco_from_masks(masks)))
        back = lesions.masks_from_coco(path, {p: m.shape for p, m in masks.items()})
    for p, m in masks.items():
        np.testing.assert_array_equal(back[p], m)


def test_a_monochrome1_dicom_is_served_as_the_model_reads_it(tmp_path):
    """12 bits stored, MONOCHROME1 (high = dark), no window, behind a TIFF-looking preamble that
    Pillow would open as a clipped 16-bit image: the page gets 1 - stored / 4095, in 8 bits."""
    import io

    import PIL.Image

    from tests import dicom_files

    stored = np.arange(6 * 7, dtype=np.int64).reshape(6, 7) * 97  # 0 .. 3977 of 4095
    (tmp_path / "root").mkdir()
    dicom_files.write_tiff_looking(dicom_files.dataset(stored, bits_stored=12, photometric="MONOCHROME1"),
                                   tmp_path / "root" / "cr.dcm")
    found = images_lib.FileImages(tmp_path / "root", ["cr.dcm"])
    served = np.asarray(PIL.Image.open(io.BytesIO(found.png("cr.dcm"))))
    expected = np.round((1.0 - stored / 4095.0) * 255.0)
    np.testing.assert_array_equal(served, expected)
    assert found.sizes == {"cr.dcm": (6, 7)}


def test_commands_answer_bad_input_with_one_line(tmp_path, capsys):
    from tests.commands import pcam_jax_command

    PIL = pytest.importorskip("PIL.Image")
    (tmp_path / "root").mkdir()
    PIL.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "root" / "x.png")
    (tmp_path / "list.csv").write_text("path,score,rank\nx.png,1,1\n")
    labels = tmp_path / "labels.json"
    (tmp_path / "labels.json.lock").write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname()}))
    # --workdir= : absl flags keep their values between commands of one process (an earlier test's run)
    code = pcam_jax_command("label", "--list", tmp_path / "list.csv", "--out", labels, "--image_root", tmp_path / "root",
                            "--workdir=")
    err = capsys.readouterr().err
    assert code == 2 and "is being written by another `pcam-jax label`" in err and "Traceback" not in err
    assert pcam_jax_command("select", "--workdir", tmp_path, "--method", "entropy") == 2
    err = capsys.readouterr().err
    assert "unknown --method 'entropy'; choose from random, uncertainty" in err and "Traceback" not in err


def test_select_leaves_out_every_image_decided_in_a_labels_file(tmp_path):
    import ml_collections

    from pcam_jax.labelling import selection

    store = store_lib.LabelStore(tmp_path / "labels.json", ITEMS)
    store.set(0, None, [BOX])
    store.set(1, "no_lesion", [])
    store.close()
    (tmp_path / "old_list.csv").write_text("path,score,rank\nz/old.png,1,1\n")
    config = ml_collections.ConfigDict({"stage3": {"lesion_labels": ""}})
    excluded = selection.excluded_paths(config, f"{tmp_path / 'labels.json'},{tmp_path / 'old_list.csv'},"
                                                f"{tmp_path / 'not_yet.json'}")
    assert excluded == {"a/x1.png", "a/x2.png", "z/old.png"}
