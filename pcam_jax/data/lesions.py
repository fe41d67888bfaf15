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

Every mask is uint8 (H, W) in {0, 1}. An annotation naming an unknown image, reaching outside
its image, or covering no pixel is a ValueError naming the file and the row / annotation id.
"""

from __future__ import annotations

import csv
import difflib
import json
import pathlib

import numpy as np
import PIL.Image

ImageSizes = dict[str, tuple[int, int]]  # image path -> (height, width)
BOX_COLUMNS = ("path", "x0", "y0", "x1", "y1")


def load_lesion_masks(source, image_sizes: ImageSizes, *,
                      unknown: list[str] | None = None) -> dict[str, np.ndarray]:
    """Masks from a folder of PNGs, a COCO ``.json`` or a ``.csv`` of boxes: {path: (H, W)}.

    An entry naming an image absent from ``image_sizes`` is an error, unless a list is given
    as ``unknown``: then each such entry is appended to it ("<where>: <path>") and skipped.
    """
    source = pathlib.Path(source)
    if source.is_dir():
        return masks_from_png_folder(source, image_sizes, unknown=unknown)
    if not source.is_file():
        raise FileNotFoundError(f"lesion labels {source} do not exist")
    if source.suffix.lower() == ".json":
        return masks_from_coco(source, image_sizes, unknown=unknown)
    if source.suffix.lower() == ".csv":
        return masks_from_box_csv(source, image_sizes, unknown=unknown)
    raise ValueError(f"lesion labels {source}: expected a folder of mask PNGs, a COCO .json or a "
                     f".csv of boxes ({','.join(BOX_COLUMNS)})")


def _is_unknown(where: str, path, image_sizes: ImageSizes, unknown: list[str] | None) -> bool:
    """True (after noting it in ``unknown``) for a path absent from ``image_sizes``; raises
    when no ``unknown`` list collects them."""
    if path in image_sizes:
        return False
    if unknown is None:
        raise _unknown_image(where, path, image_sizes)
    unknown.append(f"{where}: {path}")
    return True


def _unknown_image(where: str, path: str, image_sizes: ImageSizes) -> ValueError:
    close = difflib.get_close_matches(path, list(image_sizes), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"{where}: names image {path!r}, which is not in the dataset.{hint} Use the "
                      "image's relative path as the dataset records it (e.g. 'MURA-v1.1/...png').")


def box_mask(box, height: int, width: int, where: str) -> np.ndarray:
    """uint8 (H, W): 1 on pixels whose centre lies in the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        side, lo = ("width", f"x1 {x1:g} < x0 {x0:g}") if x1 < x0 else ("height", f"y1 {y1:g} < y0 {y0:g}")
        raise ValueError(f"{where}: box {box} has a negative {side} ({lo}); boxes are corners (x0, y0, x1, y1) "
                         "with x0 < x1 and y0 < y1 (a COCO bbox is x, y, width, height, both positive).")
    if min(x0, y0) < 0 or x1 > width or y1 > height:
        raise ValueError(f"{where}: box {box} lies outside its {width}x{height} (W x H) image; "
                         "coordinates are pixels from the top-left corner, x0 < x1 <= width.")
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return inside.astype(np.uint8)


def polygon_mask(xy, height: int, width: int, where: str) -> np.ndarray:
    """uint8 (H, W): 1 on pixels whose centre lies in the polygon [x0, y0, x1, y1, ...]."""
    points = np.asarray(xy, np.float64).reshape(-1, 2) if len(xy) % 2 == 0 else None
    if points is None or len(points) < 3:
        raise ValueError(f"{where}: a polygon needs at least 3 (x, y) points as a flat list "
                         f"[x0, y0, x1, y1, ...], got {len(xy)} numbers.")
    if points.min() < 0 or points[:, 0].max() > width or points[:, 1].max() > height:
        raise ValueError(f"{where}: polygon lies outside its {width}x{height} (W x H) image.")
    # Even-odd rule at every pixel centre, one edge at a time (exact; PIL's polygon fill rounds
    # float vertices and can be a pixel off the centre convention).
    cy = np.arange(height) + 0.5
    cx = np.arange(width) + 0.5
    inside = np.zeros((height, width), bool)
    for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0)):
        spans = (ya > cy) != (yb > cy)  # rows whose centre line this edge crosses
        if spans.any():
            x_cross = xa + (cy - ya) * (xb - xa) / np.where(spans, yb - ya, 1.0)
            inside ^= spans[:, None] & (cx[None, :] < x_cross[:, None])
    return inside.astype(np.uint8)


def _check_not_empty(mask: np.ndarray, where: str) -> np.ndarray:
    if not mask.any():
        raise ValueError(f"{where}: the annotation covers no pixel (zero area). Remove it, or "
                         "draw it larger than one pixel.")
    return mask


def masks_from_png_folder(folder, image_sizes: ImageSizes, *,
                          unknown: list[str] | None = None) -> dict[str, np.ndarray]:
    """Masks from ``<folder>/<image path>`` PNGs (every ``*.png`` under the folder)."""
    folder = pathlib.Path(folder)
    masks = {}
    for file in sorted(folder.rglob("*.png")):
        path = file.relative_to(folder).as_posix()
        if _is_unknown(f"mask {file}", path, image_sizes, unknown):
            continue
        try:
            with PIL.Image.open(file) as image:
                mask = (np.asarray(image.convert("L")) > 0).astype(np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"mask {file} cannot be read: {e}") from e
        if mask.shape != tuple(image_sizes[path]):
            raise ValueError(f"mask {file} is {mask.shape} (H, W) but its image is "
                             f"{tuple(image_sizes[path])}; save the mask at the image's size.")
        masks[path] = _check_not_empty(mask, f"mask {file}")
    return masks


def masks_from_coco(json_path, image_sizes: ImageSizes, *,
                    unknown: list[str] | None = None) -> dict[str, np.ndarray]:
    """Masks from a COCO JSON: polygons, else boxes, united per image."""
    json_path = pathlib.Path(json_path)
    try:
        coco = json.loads(json_path.read_text())
        images = {image["id"]: image for image in coco["images"]}
        annotations = coco["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: not a COCO file with 'images' (id, file_name, height, "
                         f"width) and 'annotations' (id, image_id, segmentation/bbox): {e}") from e
    masks = {}
    for index, ann in enumerate(annotations):
        where = f"{json_path} annotation id {ann.get('id', f'#{index}')}"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'.")
        path = image.get("file_name")
        if _is_unknown(where, path, image_sizes, unknown):
            continue
        height, width = image_sizes[path]
        if (image.get("height", height), image.get("width", width)) != (height, width):
            raise ValueError(f"{where}: COCO says {path} is {image.get('height')}x"
                             f"{image.get('width')} (H x W) but the image is {height}x{width}.")
        segmentation = ann.get("segmentation") or []
        if isinstance(segmentation, dict):
            raise ValueError(f"{where}: RLE segmentations are not supported; export polygons.")
        if segmentation:
            mask = np.zeros((height, width), np.uint8)
            for polygon in segmentation:
                mask |= polygon_mask(polygon, height, width, where)
        elif "bbox" in ann:
            x, y, w, h = ann["bbox"]
            mask = box_mask((x, y, x + w, y + h), height, width, where)
        else:
            raise ValueError(f"{where}: has neither 'segmentation' polygons nor a 'bbox'.")
        _check_not_empty(mask, where)
        masks[path] = masks.get(path, 0) | mask
    return masks


def masks_from_box_csv(csv_path, image_sizes: ImageSizes, *,
                       unknown: list[str] | None = None) -> dict[str, np.ndarray]:
    """Masks from a CSV with header ``path,x0,y0,x1,y1``; rows of one image are united."""
    csv_path = pathlib.Path(csv_path)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: header row lacks {missing}; the first row must name the "
                             f"columns {','.join(BOX_COLUMNS)}.")
        masks = {}
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            path = row["path"].strip()
            if _is_unknown(where, path, image_sizes, unknown):
                continue
            try:
                box = [float(row[c]) for c in BOX_COLUMNS[1:]]
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: x0, y0, x1, y1 must be numbers: {row}") from e
            mask = _check_not_empty(box_mask(box, *image_sizes[path], where), where)
            masks[path] = masks.get(path, 0) | mask
    return masks


def label_paths(source) -> set[str]:
    """The image paths a label source names, read without rasterising anything (for overlap
    checks between label sets)."""
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
