"""Clinician lesion labels -> binary masks aligned with the images (stage 3 and evaluation).

Three formats, all keyed by the image's relative path (the record's ``path``, e.g.
``MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png``):

* a folder of mask PNGs mirroring the image paths: ``<folder>/<image path>`` is the mask of that
  image, same width and height, any nonzero pixel is lesion (gray or RGB, 0/1 or 0/255);
* COCO JSON: ``images[].file_name`` is the image path (``height``/``width`` must match the
  image); each annotation's polygons (``segmentation``: lists of x, y, x, y, ...) or, without
  polygons, its ``bbox`` [x, y, w, h]; RLE segmentations are not supported (export polygons);
* a CSV of boxes with a header row ``path,x0,y0,x1,y1`` (more columns are ignored); several rows
  of one image are united.

Coordinates are COCO's: continuous pixel units, x right, y down, pixel (row i, column j) covers
[j, j+1) x [i, i+1) and is lesion when its centre (j + 0.5, i + 0.5) lies inside the shape. So a
box (x0, y0, x1, y1) = (2, 1, 5, 3) marks columns 2, 3, 4 of rows 1, 2.

A label names its image by the dataset's relative path; where no image has that exact path, the
image whose path differs only in the extension is meant (a mask ``a/b.png`` labels ``a/b.jpg`` or
``a/b.dcm``; two such images make the label ambiguous, an error).

Every mask is uint8 (H, W) in {0, 1}. A vertex or box edge less than `EDGE_TOLERANCE` px outside
the image (COCO's continuous coordinates end at x = W, y = H; exporters round to W + 5e-13) is
clipped to the edge. An annotation naming an unknown image, lying truly outside its image, or
covering no pixel is a ValueError naming the file and the row / annotation id; given a
`LabelReport`, such an annotation is instead listed in it and skipped (one bad annotation among
hundreds must not cost an evaluation), and the clipped ones are listed too.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import pathlib

import numpy as np
import PIL.Image

ImageSizes = dict[str, tuple[int, int]]  # image path -> (height, width)
BOX_COLUMNS = ("path", "x0", "y0", "x1", "y1")
EDGE_TOLERANCE = 0.5  # px outside the image that count as the edge: no pixel centre lies there
_NEAREST_FOR = 5      # unknown entries that get a nearest-path hint (difflib is slow on many)


@dataclasses.dataclass
class LabelReport:
    """What a load clipped to the image edge and what it skipped, one line per annotation."""

    clipped: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def summary(self, listed: int = 3) -> str:
        """"" when nothing happened, else one line with the counts and the first few."""
        parts = []
        if self.clipped:
            parts.append(f"{len(self.clipped)} annotation(s) clipped to the image edge "
                         f"(vertices < {EDGE_TOLERANCE} px outside)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped: " + "; ".join(self.skipped[:listed])
                         + ("; ..." if len(self.skipped) > listed else ""))
        return "; ".join(parts)


def path_key(path: str) -> str:
    """The path without its extension: how a label finds an image saved in another format."""
    return str(pathlib.PurePosixPath(path).with_suffix(""))


class _Index:
    """Label paths -> dataset paths: exact, else the one image with the same extension-less path."""

    def __init__(self, image_sizes: ImageSizes):
        self.sizes = image_sizes
        self.by_key: dict[str, list[str]] = {}
        for path in image_sizes:
            self.by_key.setdefault(path_key(path), []).append(path)

    def find(self, where: str, path, unknown: list[str] | None) -> str | None:
        """The dataset path ``path`` labels; None (noted in ``unknown``) when it labels none."""
        if path in self.sizes:
            return path
        candidates = self.by_key.get(path_key(path), []) if isinstance(path, str) else []
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise ValueError(f"{where}: {path!r} could label {' or '.join(sorted(candidates))} (same path, "
                             "other extensions); name the image with its extension.")
        if unknown is None:
            raise _unknown_image(where, path, self.sizes)
        hint = _nearest(path, self.sizes) if len(unknown) < _NEAREST_FOR else None
        unknown.append(f"{where}: {path}" + (f" (nearest: {hint})" if hint else ""))
        return None


def _nearest(path, image_sizes: ImageSizes) -> str | None:
    close = difflib.get_close_matches(str(path), list(image_sizes), n=1, cutoff=0.0)
    return close[0] if close else None


def load_lesion_masks(source, image_sizes: ImageSizes, *, unknown: list[str] | None = None,
                      report: LabelReport | None = None) -> dict[str, np.ndarray]:
    """Masks from a folder of PNGs, a COCO ``.json`` or a ``.csv`` of boxes: {path: (H, W)}.

    An entry naming an image absent from ``image_sizes`` is an error, unless a list is given
    as ``unknown``: then each such entry is appended to it ("<where>: <path> (nearest: ...)")
    and skipped. A bad annotation is an error, unless a ``report`` collects it (see the top).
    """
    source = pathlib.Path(source)
    kwargs = dict(unknown=unknown, report=report)
    if source.is_dir():
        return masks_from_png_folder(source, image_sizes, **kwargs)
    if not source.is_file():
        raise FileNotFoundError(f"lesion labels {source} do not exist")
    if source.suffix.lower() == ".json":
        return masks_from_coco(source, image_sizes, **kwargs)
    if source.suffix.lower() == ".csv":
        return masks_from_box_csv(source, image_sizes, **kwargs)
    raise ValueError(f"lesion labels {source}: expected a folder of mask PNGs, a COCO .json or a "
                     f".csv of boxes ({','.join(BOX_COLUMNS)})")


def _unknown_image(where: str, path: str, image_sizes: ImageSizes) -> ValueError:
    close = difflib.get_close_matches(path, list(image_sizes), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{where}: names image {path!r}, which is not in the dataset.{hint} Use the "
                      "image's relative path as the dataset records it (e.g. 'MURA-v1.1/...png').")


def clip_to_image(points: np.ndarray, height: int, width: int, where: str,
                  clipped: list[str] | None = None) -> np.ndarray:
    """(N, 2) x, y points clipped to [0, W] x [0, H] when they lie less than `EDGE_TOLERANCE`
    outside (noted in ``clipped``); ValueError naming ``where`` when any lies farther out."""
    low = np.array([0.0, 0.0])
    high = np.array([float(width), float(height)])
    if (points < low - EDGE_TOLERANCE).any() or (points > high + EDGE_TOLERANCE).any():
        raise ValueError(f"{where}: lies outside its {width}x{height} (W x H) image (by more than "
                         f"{EDGE_TOLERANCE} px); coordinates are pixels from the top-left corner, "
                         "0 <= x <= width, 0 <= y <= height.")
    if (points < low).any() or (points > high).any():
        if clipped is not None:
            clipped.append(where)
        points = np.clip(points, low, high)
    return points


def box_mask(box, height: int, width: int, where: str,
             clipped: list[str] | None = None) -> np.ndarray:
    """uint8 (H, W): 1 on pixels whose centre lies in the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        side, lo = ("width", f"x1 {x1:g} < x0 {x0:g}") if x1 < x0 else ("height", f"y1 {y1:g} < y0 {y0:g}")
        raise ValueError(f"{where}: box {box} has a negative {side} ({lo}); boxes are corners (x0, y0, x1, y1) "
                         "with x0 < x1 and y0 < y1 (a COCO bbox is x, y, width, height, both positive).")
    (x0, y0), (x1, y1) = clip_to_image(np.array([[x0, y0], [x1, y1]]), height, width,
                                       f"{where}: box {box}", clipped)
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return inside.astype(np.uint8)


def polygon_mask(xy, height: int, width: int, where: str,
                 clipped: list[str] | None = None) -> np.ndarray:
    """uint8 (H, W): 1 on pixels whose centre lies in the polygon [x0, y0, x1, y1, ...]."""
    points = np.asarray(xy, np.float64).reshape(-1, 2) if len(xy) % 2 == 0 else None
    if points is None or len(points) < 3:
        raise ValueError(f"{where}: a polygon needs at least 3 (x, y) points as a flat list "
                         f"[x0, y0, x1, y1, ...], got {len(xy)} numbers.")
    points = clip_to_image(points, height, width, f"{where}: polygon", clipped)
    # Even-odd rule at every pixel centre, one edge at a time (exact; PIL's polygon fill rounds
    # float vertices and can be a pixel off the centre convention), on the polygon's bounding
    # rows and columns only: a fracture covers <1 % of a 2880x2304 radiograph.
    r0, c0 = (int(v) for v in np.floor(points.min(axis=0))[::-1])
    r1, c1 = (min(int(v) + 1, n) for v, n in zip(np.ceil(points.max(axis=0))[::-1], (height, width)))
    cy = np.arange(r0, r1) + 0.5
    cx = np.arange(c0, c1) + 0.5
    inside = np.zeros((len(cy), len(cx)), bool)
    for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0)):
        spans = (ya > cy) != (yb > cy)  # rows whose centre line this edge crosses
        if spans.any():
            x_cross = xa + (cy - ya) * (xb - xa) / np.where(spans, yb - ya, 1.0)
            inside ^= spans[:, None] & (cx[None, :] < x_cross[:, None])
    mask = np.zeros((height, width), np.uint8)
    mask[r0:r1, c0:c1] = inside
    return mask


def _check_not_empty(mask: np.ndarray, where: str) -> np.ndarray:
    if not mask.any():
        raise ValueError(f"{where}: the annotation covers no pixel (zero area). Remove it, or "
                         "draw it larger than one pixel.")
    return mask


def _guarded(report: LabelReport | None, where: str, make):
    """``make()``, or None with the error noted in ``report.skipped`` when a report is given."""
    if report is None:
        return make()
    try:
        return make()
    except ValueError as e:
        report.skipped.append(str(e) if str(e).startswith(where) else f"{where}: {e}")
        return None


def _unite(masks: dict, path: str, mask) -> None:
    if mask is not None:
        masks[path] = masks[path] | mask if path in masks else mask


def masks_from_png_folder(folder, image_sizes: ImageSizes, *, unknown: list[str] | None = None,
                          report: LabelReport | None = None) -> dict[str, np.ndarray]:
    """Masks from ``<folder>/<image path>`` PNGs (every ``*.png`` under the folder; the image may
    have any extension, see the top)."""
    folder = pathlib.Path(folder)
    index, masks = _Index(image_sizes), {}
    for file in sorted(folder.rglob("*.png")):
        where = f"mask {file}"
        path = index.find(where, file.relative_to(folder).as_posix(), unknown)
        if path is None:
            continue

        def read(file=file, path=path, where=where):
            try:
                with PIL.Image.open(file) as image:
                    mask = (np.asarray(image.convert("L")) > 0).astype(np.uint8)
            except (OSError, SyntaxError, ValueError) as e:
                raise ValueError(f"{where} cannot be read: {e}") from e
            if mask.shape != tuple(image_sizes[path]):
                raise ValueError(f"{where} is {mask.shape} (H, W) but its image is "
                                 f"{tuple(image_sizes[path])} ({path}); save the mask at the image's size.")
            return _check_not_empty(mask, where)

        _unite(masks, path, _guarded(report, where, read))
    return masks


def _coco_mask(ann: dict, image: dict, size: tuple[int, int], where: str,
               clipped: list[str] | None) -> np.ndarray:
    """One COCO annotation's mask on its image of ``size`` (H, W): polygons, else the box."""
    height, width = size
    if (image.get("height", height), image.get("width", width)) != (height, width):
        raise ValueError(f"{where}: COCO says {image.get('file_name')} is {image.get('height')}x"
                         f"{image.get('width')} (H x W) but the image is {height}x{width}.")
    segmentation = ann.get("segmentation") or []
    if isinstance(segmentation, dict):
        raise ValueError(f"{where}: RLE segmentations are not supported; export polygons.")
    if segmentation:
        mask = np.zeros((height, width), np.uint8)
        for polygon in segmentation:
            mask |= polygon_mask(polygon, height, width, where, clipped)
    elif "bbox" in ann:
        x, y, w, h = ann["bbox"]
        mask = box_mask((x, y, x + w, y + h), height, width, where, clipped)
    else:
        raise ValueError(f"{where}: has neither 'segmentation' polygons nor a 'bbox'.")
    return _check_not_empty(mask, where)


def read_coco(json_path) -> tuple[dict, list]:
    """({image id: image entry}, annotations) of a COCO JSON; ValueError naming the file."""
    json_path = pathlib.Path(json_path)
    try:
        coco = json.loads(json_path.read_text())
        return {image["id"]: image for image in coco["images"]}, list(coco["annotations"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: not a COCO file with 'images' (id, file_name, height, "
                         f"width) and 'annotations' (id, image_id, segmentation/bbox): {e}") from e


def masks_from_coco(json_path, image_sizes: ImageSizes, *, unknown: list[str] | None = None,
                    report: LabelReport | None = None) -> dict[str, np.ndarray]:
    """Masks from a COCO JSON: polygons, else boxes, united per image."""
    images, annotations = read_coco(json_path)
    index, masks = _Index(image_sizes), {}
    clipped = report.clipped if report is not None else None
    for number, ann in enumerate(annotations):
        where = f"{json_path} annotation id {ann.get('id', f'#{number}')}"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'.")
        path = index.find(where, image.get("file_name"), unknown)
        if path is not None:
            _unite(masks, path, _guarded(report, where, lambda: _coco_mask(
                ann, image, image_sizes[path], where, clipped)))
    return masks


def masks_from_box_csv(csv_path, image_sizes: ImageSizes, *, unknown: list[str] | None = None,
                       report: LabelReport | None = None) -> dict[str, np.ndarray]:
    """Masks from a CSV with header ``path,x0,y0,x1,y1``; rows of one image are united."""
    csv_path = pathlib.Path(csv_path)
    index, masks = _Index(image_sizes), {}
    clipped = report.clipped if report is not None else None
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: header row lacks {missing}; the first row must name the "
                             f"columns {','.join(BOX_COLUMNS)}.")
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            path = index.find(where, row["path"].strip(), unknown)
            if path is None:
                continue

            def box(row=row, path=path, where=where):
                try:
                    corners = [float(row[c]) for c in BOX_COLUMNS[1:]]
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{where}: x0, y0, x1, y1 must be numbers: {row}") from e
                return _check_not_empty(box_mask(corners, *image_sizes[path], where, clipped), where)

            _unite(masks, path, _guarded(report, where, box))
    return masks


def label_paths(source) -> set[str]:
    """The image paths a label source names, read without rasterising anything (for overlap
    checks between label sets: compare their `path_key`s, a mask PNG names a JPEG too)."""
    source = pathlib.Path(source)
    if source.is_dir():
        return {f.relative_to(source).as_posix() for f in source.rglob("*.png")}
    if not source.is_file():
        raise FileNotFoundError(f"lesion labels {source} do not exist")
    if source.suffix.lower() == ".json":
        try:
            coco = json.loads(source.read_text())
            names = {image["id"]: image.get("file_name") for image in coco["images"]}
            return {names.get(ann.get("image_id")) for ann in coco["annotations"]} - {None}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{source}: not a COCO file with 'images' and 'annotations': {e}") from e
    with source.open(newline="") as f:
        return {row.get("path", "").strip() for row in csv.DictReader(f)} - {""}
