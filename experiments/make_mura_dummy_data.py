"""Writes pcam_jax/data/dummy_data/: a tiny tree laid out exactly like MURA v1.1, of synthetic PNGs.

Never a real MURA image: every picture is a few random ellipses and rectangles, 24-48 px.
Deterministic: the same PNG bytes on every run. Run from the repository root:

    .venv/bin/python experiments/make_mura_dummy_data.py

What the tree exercises (tests/test_mura.py relies on it):
  * two body parts (XR_WRIST, XR_ELBOW), both labels, studies with one or two images;
  * train patients picked by `mura.in_model_selection` so that 2 of 6 fall in the default
    (0.1) model-selection slice, one of them with studies in both body parts;
  * one RGB PNG (its channels differ, so the luma conversion is really exercised);
  * a study path written without its trailing "/" in train_labeled_studies.csv.
Mismatched labels and corrupt files are made by the tests in temporary copies.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import PIL.Image
import PIL.ImageDraw

from pcam_jax.data import mura

OUT = pathlib.Path(__file__).resolve().parent.parent / "pcam_jax" / "data" / "dummy_data"
FRACTION = 0.1  # the default config's model_selection_fraction

# (split, body part, patient role, study, label, number of images)
STUDIES = [
    ("train", "XR_WRIST", "ms_a", 1, 1, 2),
    ("train", "XR_ELBOW", "ms_a", 1, 0, 1),
    ("train", "XR_ELBOW", "ms_b", 1, 1, 1),
    ("train", "XR_WRIST", "tr_a", 1, 1, 2),
    ("train", "XR_WRIST", "tr_b", 1, 0, 1),
    ("train", "XR_ELBOW", "tr_c", 1, 1, 1),
    ("train", "XR_ELBOW", "tr_c", 2, 0, 1),
    ("train", "XR_WRIST", "tr_d", 1, 0, 2),
    ("valid", "XR_WRIST", "va_a", 1, 1, 2),
    ("valid", "XR_ELBOW", "va_b", 1, 0, 1),
    ("valid", "XR_ELBOW", "va_c", 1, 1, 1),
]
RGB_IMAGE = "MURA-v1.1/train/XR_WRIST/patient{tr_a}/study1_positive/image2.png"
NO_SLASH_STUDY = "MURA-v1.1/train/XR_WRIST/patient{tr_b}/study1_negative"


def patient_numbers() -> dict[str, str]:
    """Five-digit patient numbers for each role: "ms_*" inside the model-selection slice."""
    roles = sorted({role for _, _, role, *_ in STUDIES})
    inside = [r for r in roles if r.startswith("ms_")]
    outside = [r for r in roles if not r.startswith("ms_")]
    numbers, n = {}, 0
    while inside or outside:
        n += 1
        number = f"{n:05d}"
        if mura.in_model_selection(f"patient{number}", FRACTION):
            if inside:
                numbers[inside.pop(0)] = number
        elif outside:
            numbers[outside.pop(0)] = number
    return numbers


def random_radiograph(rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W): a dark background with a few bright shapes; H, W in [24, 48]."""
    h, w = rng.integers(24, 49, size=2)
    image = PIL.Image.new("L", (int(w), int(h)), int(rng.integers(0, 40)))
    draw = PIL.ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        x1, y1 = x0 + rng.integers(4, w // 2), y0 + rng.integers(4, h // 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((int(x0), int(y0), int(x1), int(y1)), fill=int(rng.integers(120, 256)))
    return np.asarray(image)


def main() -> None:
    numbers = patient_numbers()
    rgb_path = RGB_IMAGE.format(**numbers)
    no_slash = NO_SLASH_STUDY.format(**numbers)
    if OUT.exists():
        shutil.rmtree(OUT)
    root = OUT / mura.MURA_ROOT
    rng = np.random.default_rng(0)
    rows = {split: ([], []) for split in mura.OFFICIAL_SPLITS}
    for split, part, role, study, label, num_images in STUDIES:
        folder = "positive" if label else "negative"
        study_path = f"{mura.MURA_ROOT}/{split}/{part}/patient{numbers[role]}/study{study}_{folder}"
        slash = "" if study_path == no_slash else "/"
        rows[split][1].append(f"{study_path}{slash},{label}")
        for k in range(1, num_images + 1):
            path = f"{study_path}/image{k}.png"
            rows[split][0].append(path)
            gray = random_radiograph(rng)
            if path == rgb_path:  # R, G, B differ so a "take channel 0" bug would show
                pixels = np.stack([gray, gray // 2 + 60, 255 - gray], axis=-1).astype(np.uint8)
            else:
                pixels = gray
            (OUT / path).parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(pixels).save(OUT / path, optimize=True)
    for split, (image_rows, study_rows) in rows.items():
        paths_csv, studies_csv = mura.csv_names(split)
        (root / paths_csv).write_text("\n".join(image_rows) + "\n")
        (root / studies_csv).write_text("\n".join(study_rows) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.1f} KiB); patients {numbers}; RGB image {rgb_path}")


if __name__ == "__main__":
    main()
