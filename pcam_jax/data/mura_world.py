"""A MURA-shaped world that runs anywhere: synthetic radiographs laid out exactly like MURA v1.1,
with COCO lesion outlines as a clinician's annotation tool would export them.

`write_mura_world(out_dir)` writes::

    <out_dir>/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageN.png
    <out_dir>/MURA-v1.1/{train,valid}_image_paths.csv, {train,valid}_labeled_studies.csv
    <out_dir>/lesions_train.json    COCO outlines of about 100 abnormal train images (stage 3)
    <out_dir>/lesions_valid.json    COCO outlines of abnormal valid images (evaluation)

What it reproduces of MURA: the 7 body parts; patients with one to three studies, some in a
second body part; 1-3 images a study; study labels in the folder name and in the header-less
CSVs, whose paths start with ``MURA-v1.1/`` and whose study paths end with ``/`` (one train row
without it, as the real file has); 8-bit PNGs of odd, non-square sizes, a third of them RGB
(grey in three channels). The pictures are `pcam_jax.data.synthetic.generate`'s (so every
abnormal image has an exact lesion mask) resized to each image's size.

The COCO files: ``images`` (id, file_name = the image's MURA path, width, height), one category
"lesion", and an annotation per connected lesion region: its outline as a polygon (the convex
hull of the region's pixel corners, in COCO's pixel coordinates) or, for every seventh image, its
bounding box only. Deterministic in ``seed``. Never a real MURA image.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pathlib

import numpy as np
import PIL.Image
import scipy.ndimage

from pcam_jax.data import synthetic
from pcam_jax.data.mura import MURA_ROOT, csv_names

BODY_PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
VALID_FIRST_PATIENT = 11185  # MURA's valid patients are numbered after its train patients
BOX_ONLY_EVERY = 7


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (M, 2) of points (N, 2) (Andrew's monotone chain)."""
    pts = np.unique(np.asarray(points, np.float64), axis=0)
    if len(pts) < 3:
        return pts

    def half(sequence):
        chain = []
        for p in sequence:
            while len(chain) >= 2 and np.cross(chain[-1] - chain[-2], p - chain[-2]) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def outline_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons [x0, y0, x1, y1, ...], one per 8-connected region of ``mask`` (H, W): the
    convex hull of its pixels' corners (so it covers every pixel centre of the region)."""
    regions, count = scipy.ndimage.label(mask > 0, structure=np.ones((3, 3)))
    polygons = []
    for region in range(1, count + 1):
        rows, cols = np.nonzero(regions == region)
        corners = np.concatenate([np.stack([cols + dx, rows + dy], 1) for dx in (0, 1) for dy in (0, 1)])
        polygons.append([float(v) for v in convex_hull(corners).ravel()])
    return polygons


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _plan(seed: int, split: str, patients_per_part: int) -> list[dict]:
    """Studies of one split: [{part, patient, study, label, n_images}], MURA's numbering."""
    rng = _rng(seed, 0 if split == "train" else 1)
    first = 1 if split == "train" else VALID_FIRST_PATIENT
    studies, number = [], first
    for part_index, part in enumerate(BODY_PARTS):
        for _ in range(patients_per_part):
            patient = f"patient{number:05d}"
            number += 1
            parts = [part] * int(rng.integers(1, 3))
            if rng.random() < 0.2:  # some patients have a study of a second body part
                parts.append(BODY_PARTS[(part_index + 1 + int(rng.integers(6))) % len(BODY_PARTS)])
            counts: dict[str, int] = {}
            for study_part in parts:
                counts[study_part] = counts.get(study_part, 0) + 1
                studies.append(dict(part=study_part, patient=patient, study=counts[study_part],
                                    label=int(rng.random() < 0.45), n_images=int(rng.integers(1, 4))))
    return studies


def _picked(path: str, seed: int) -> float:
    """A stable number in [0, 1) per image path: which abnormal images the clinician labels."""
    digest = hashlib.sha256(f"mura-world/{seed}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _write_split(root: pathlib.Path, split: str, studies: list[dict], *, seed: int,
                 sides: tuple[int, int], index_offset: int) -> list[dict]:
    """Writes the PNGs and CSVs of one split; returns [{path, height, width, mask}] of the
    abnormal images whose mask survived the resize (candidates for labelling)."""
    image_rows, study_rows, candidates = [], [], []
    index = index_offset
    for s_index, s in enumerate(studies):
        kind = "positive" if s["label"] else "negative"
        study_path = f"{MURA_ROOT}/{split}/{s['part']}/{s['patient']}/study{s['study']}_{kind}"
        trailing = "" if (split == "train" and s_index == 1) else "/"  # MURA's one odd row
        study_rows.append([study_path + trailing, str(s["label"])])
        for image_number in range(1, s["n_images"] + 1):
            index += 1
            rng = _rng(seed, 2, index)
            height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
            drawn = synthetic.generate(
                index, abnormal=bool(s["label"]), seed=seed, image_size=max(height, width),
                marker_prob=0.7 if s["label"] else 0.2, hardware_prob=0.2 if s["label"] else 0.05)
            image = PIL.Image.fromarray(drawn["image"]).resize((width, height), PIL.Image.BILINEAR)
            mask = np.asarray(PIL.Image.fromarray(drawn["lesion_mask"] * 255).resize(
                (width, height), PIL.Image.NEAREST)) > 0
            if index % 3 == 0:
                image = image.convert("RGB")
            path = f"{study_path}/image{image_number}.png"
            file = root.parent / path
            file.parent.mkdir(parents=True, exist_ok=True)
            image.save(file)
            image_rows.append([path])
            if mask.any():
                candidates.append(dict(path=path, height=height, width=width, mask=mask))
    paths_csv, studies_csv = csv_names(split)
    for name, rows in ((paths_csv, image_rows), (studies_csv, study_rows)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    return candidates


def coco_export(images: list[dict], description: str) -> dict:
    """A COCO dict of lesion outlines for [{path, height, width, mask}] (see module docstring)."""
    coco = {"info": {"description": description, "version": "1.0"}, "licenses": [],
            "categories": [{"id": 1, "name": "lesion", "supercategory": "finding"}],
            "images": [], "annotations": []}
    for image_id, entry in enumerate(images, start=1):
        coco["images"].append({"id": image_id, "file_name": entry["path"], "width": entry["width"],
                               "height": entry["height"]})
        for polygon in outline_polygons(entry["mask"]):
            xs, ys = polygon[0::2], polygon[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotation = {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                          "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                          "segmentation": [] if image_id % BOX_ONLY_EVERY == 0 else [polygon]}
            coco["annotations"].append(annotation)
    return coco


def write_mura_world(out_dir, *, train_patients_per_part: int = 12, valid_patients_per_part: int = 4,
                     sides: tuple[int, int] = (96, 160), num_labelled_train: int = 100,
                     num_labelled_valid: int = 60, seed: int = 0) -> dict:
    """Writes the world into ``out_dir`` (see the module docstring); returns a summary:
    {manual_dir, train_labels, valid_labels, images: {split: n}, labelled: {split: n}}."""
    out = pathlib.Path(out_dir)
    root = out / MURA_ROOT
    if root.exists():
        raise FileExistsError(f"{root} exists; write the MURA world into an empty folder")
    if not 16 <= sides[0] <= sides[1]:
        raise ValueError(f"sides={sides}: expected 16 <= shortest <= longest image side")
    root.mkdir(parents=True)
    summary = {"manual_dir": str(out), "images": {}, "labelled": {}}
    offset = 0
    for split, per_part, wanted in (("train", train_patients_per_part, num_labelled_train),
                                    ("valid", valid_patients_per_part, num_labelled_valid)):
        studies = _plan(seed, split, per_part)
        candidates = _write_split(root, split, studies, seed=seed, sides=sides, index_offset=offset)
        offset += 10**6
        chosen = sorted(candidates, key=lambda c: _picked(c["path"], seed))[:wanted]
        chosen.sort(key=lambda c: c["path"])
        labels = out / f"lesions_{split}.json"
        labels.write_text(json.dumps(coco_export(chosen, f"lesion outlines, MURA world {split}")))
        summary[f"{split}_labels"] = str(labels)
        summary["images"][split] = sum(s["n_images"] for s in studies)
        summary["labelled"][split] = len(chosen)
    return summary
