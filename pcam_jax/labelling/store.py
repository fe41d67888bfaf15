"""The labels file of `pcam-jax label`: COCO JSON, rewritten atomically on every change, one writer.

What it holds is what `config.stage3.lesion_labels` reads (`pcam_jax.data.lesions.masks_from_coco`):

    images       {id, file_name: the dataset's image path, height, width, pcam_status}
                 for every image the clinician has decided on; pcam_status is "labelled",
                 "no_lesion" (looked, saw none: no annotation, so stage 3 does not train on it)
                 or "skipped" (come back later). COCO readers ignore the extra field.
    annotations  {id, image_id, category_id 1, iscrowd 0, bbox [x, y, w, h], area,
                 segmentation}: a polygon as segmentation [[x0, y0, x1, y1, ...]]; a box with
                 segmentation [] (so its bbox is the shape). Coordinates in the image's pixels,
                 COCO's convention (x right, y down, pixel (i, j) covers [j, j+1) x [i, i+1)).
    categories   [{id 1, name "lesion"}]

Entries of images not in the current list (an earlier round's) are kept as they were. Every save
writes a temporary file beside the target, fsyncs it and renames it over the target: a killed
server or a closed tab leaves the last complete file, never half of one. ``<file>.lock`` (pid and
host) keeps a second `pcam-jax label` off the same file; a lock left by a dead process on this host
is taken over.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import threading
import time

import numpy as np

from pcam_jax.data import lesions

STATUSES = ("labelled", "no_lesion", "skipped")
CATEGORY = {"id": 1, "name": "lesion", "supercategory": "lesion"}


class LabelFileLocked(ValueError):
    """Another `pcam-jax label` writes this labels file."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class Lock:
    """``<path>.lock`` held while this process writes ``path``; `release` removes it."""

    def __init__(self, path):
        self.path = pathlib.Path(str(path) + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise LabelFileLocked(f"{path}: could not take its lock {self.path}; remove that file if no "
                              "`pcam-jax label` writes the labels")

    def _take_over_if_stale(self, path) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, "?"
        if host == socket.gethostname() and not _alive(pid):
            print(f"{path}: taking over the lock of process {pid}, which is gone", flush=True)
            self.path.unlink(missing_ok=True)
            return
        raise LabelFileLocked(
            f"{path} is being written by another `pcam-jax label` (process {pid} on {host}, since "
            f"{holder.get('since', '?')}); close that one first, or write to another --out. If it is "
            f"gone, delete {self.path}.")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def atomic_write_json(path, data) -> None:
    """``path`` holds ``data`` as JSON, or (if this is killed) what it held before: never a part."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def check_shape(shape: dict, height: int, width: int, where: str) -> dict:
    """A shape from the page, checked and cleaned: {"type": "box", "bbox": [x, y, w, h]} or
    {"type": "polygon", "points": [x0, y0, ...]}, inside the image, covering a pixel centre.
    Raises ValueError naming ``where`` and the fix."""
    kind = shape.get("type") if isinstance(shape, dict) else None
    try:
        if kind == "box":
            x, y, w, h = (round(float(v), 2) for v in shape["bbox"])
            mask = lesions.box_mask((x, y, x + w, y + h), height, width, where)
            clean = {"type": "box", "bbox": [x, y, w, h]}
        elif kind == "polygon":
            points = [round(float(v), 2) for v in shape["points"]]
            mask = lesions.polygon_mask(points, height, width, where)
            clean = {"type": "polygon", "points": points}
        else:
            raise ValueError(f"{where}: a shape is {{'type': 'box', 'bbox': [x, y, w, h]}} or "
                             f"{{'type': 'polygon', 'points': [x0, y0, ...]}}, got {shape!r}")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: malformed shape {shape!r} ({e})") from e
    if not mask.any():
        raise ValueError(f"{where}: the shape covers no pixel; draw it larger")
    return clean


def _annotation_shape(ann: dict) -> dict:
    segmentation = ann.get("segmentation") or []
    if segmentation:
        return {"type": "polygon", "points": [float(v) for v in segmentation[0]]}
    return {"type": "box", "bbox": [float(v) for v in ann["bbox"]]}


def _area_and_bbox(shape: dict) -> tuple[float, list[float]]:
    if shape["type"] == "box":
        x, y, w, h = shape["bbox"]
        return w * h, [x, y, w, h]
    xy = np.asarray(shape["points"], np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))  # shoelace
    return area, [float(x.min()), float(y.min()), float(x.max() - x.min()), float(y.max() - y.min())]


class LabelStore:
    """The decisions on the listed images, saved to ``path`` at every change (see module docstring).

    Args:
      path: the COCO JSON to write (and to resume from when it exists).
      items: [(image path, height, width)] in list order.
    """

    def __init__(self, path, items: list[tuple[str, int, int]]):
        self.path = pathlib.Path(path)
        self.items = [{"path": p, "height": int(h), "width": int(w), "status": None, "shapes": []}
                      for p, h, w in items]
        self._index = {item["path"]: i for i, item in enumerate(self.items)}
        self._others = {"images": [], "annotations": []}  # entries of unlisted images, kept
        self._mutex = threading.Lock()
        self.lock = Lock(self.path)
        try:
            if self.path.exists():
                self._resume()
        except Exception:
            self.lock.release()
            raise

    def _resume(self) -> None:
        try:
            coco = json.loads(self.path.read_text())
            images, annotations = coco["images"], coco["annotations"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: not a COCO labels file ({e}); give another --out, or move it away") from e
        listed = {}
        for image in images:
            index = self._index.get(image.get("file_name"))
            if index is None:
                self._others["images"].append(image)
                continue
            item = self.items[index]
            if (image.get("height"), image.get("width")) != (item["height"], item["width"]):
                raise ValueError(f"{self.path}: {item['path']} is {image.get('height')}x{image.get('width')} there but "
                                 f"{item['height']}x{item['width']} in the dataset; it was labelled on another image")
            listed[image["id"]] = item
            item["status"] = image.get("pcam_status") or "labelled"
        other_ids = {image["id"] for image in self._others["images"]}
        for ann in annotations:
            if ann.get("image_id") in listed:
                listed[ann["image_id"]]["shapes"].append(_annotation_shape(ann))
            elif ann.get("image_id") in other_ids:
                self._others["annotations"].append(ann)
        for item in listed.values():  # an image whose every shape was deleted: no lesion left
            if item["status"] == "labelled" and not item["shapes"]:
                item["status"] = None

    def set(self, index: int, status: str | None, shapes: list[dict]) -> dict:
        """Record the decision on item ``index`` and save; returns the item. A "labelled" image
        needs at least one shape; "no_lesion" and "skipped" none; None (undecided) any."""
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        item = self.items[index]
        where = f"{item['path']}"
        if status is not None and status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {STATUSES} or null, got {status!r}")
        clean = [check_shape(s, item["height"], item["width"], f"{where} shape {k + 1}") for k, s in enumerate(shapes)]
        if status in ("no_lesion", "skipped") and clean:
            raise ValueError(f"{where}: marked {status} but has {len(clean)} shape(s); delete them first")
        if status is None and clean:
            status = "labelled"
        if status == "labelled" and not clean:
            status = None
        with self._mutex:
            item["status"], item["shapes"] = status, clean
            self.save()
        return item

    def coco(self) -> dict:
        images, annotations = [], []
        used_ids = {image["id"] for image in self._others["images"]}
        next_id = max([0] + [int(i) for i in used_ids if isinstance(i, int)]) + 1
        for item in self.items:
            if item["status"] is None:
                continue
            image_id = next_id
            next_id += 1
            images.append({"id": image_id, "file_name": item["path"], "height": item["height"],
                           "width": item["width"], "pcam_status": item["status"]})
            for shape in item["shapes"]:
                area, bbox = _area_and_bbox(shape)
                annotations.append({"image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox,
                                    "area": area, "segmentation": [shape["points"]] if shape["type"] == "polygon" else []})
        annotations = self._others["annotations"] + annotations
        first = max([0] + [int(a.get("id", 0)) for a in self._others["annotations"]]) + 1
        for k, ann in enumerate(annotations[len(self._others["annotations"]):]):
            ann["id"] = first + k
        return {"info": {"description": "lesion labels drawn in `pcam-jax label`", "version": "1"},
                "images": self._others["images"] + images, "annotations": annotations,
                "categories": [CATEGORY]}

    def save(self) -> None:
        atomic_write_json(self.path, self.coco())

    def progress(self) -> dict:
        done = sum(item["status"] is not None for item in self.items)
        return {"done": done, "total": len(self.items),
                **{s: sum(item["status"] == s for item in self.items) for s in STATUSES}}

    def close(self) -> None:
        self.lock.release()


def coco_from_masks(masks: dict) -> dict:
    """{path: uint8 (H, W)} -> COCO that `pcam_jax.data.lesions.masks_from_coco` reads back exactly:
    each row's run of lesion pixels as a one-pixel-high box (the oracle labeller of the
    acquisition study: the dataset's own masks drawn as a clinician's labels)."""
    images, annotations = [], []
    for image_id, (path, mask) in enumerate(masks.items(), 1):
        mask = np.asarray(mask) > 0
        images.append({"id": image_id, "file_name": path, "height": int(mask.shape[0]),
                       "width": int(mask.shape[1]), "pcam_status": "labelled"})
        padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
        for row, starts, ends in _runs(padded):
            for x0, x1 in zip(starts, ends):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                    "bbox": [int(x0), row, int(x1 - x0), 1], "area": int(x1 - x0), "segmentation": []})
    return {"images": images, "annotations": annotations, "categories": [CATEGORY]}


def _runs(padded: np.ndarray):
    """(row, run starts, run ends) of each row of a 0/1 array padded with a zero column each side."""
    steps = np.diff(padded, axis=1)
    for row in range(padded.shape[0]):
        starts, ends = np.flatnonzero(steps[row] == 1), np.flatnonzero(steps[row] == -1)
        if len(starts):
            yield row, starts, ends
