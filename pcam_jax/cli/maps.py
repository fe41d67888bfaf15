"""``pcam-jax maps --workdir DIR [--method positive_cam] --out DIR IMAGE...``

Writes one overlay PNG per input image (PNG or JPEG of any size, RGB or gray) and
``predictions.csv`` with the abnormal probability of each. Images given as a folder are
searched for *.png/*.jpg/*.jpeg. A file that cannot be read is reported by name and the
rest are still processed; the command exits non-zero if any file failed.
"""

import csv
import pathlib
import sys

from pcam_jax.cli import flags

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_paths(arguments) -> list[pathlib.Path]:
    """The files named, and the images found under each folder named (a folder with none is an error)."""
    paths = []
    for arg in arguments:
        path = pathlib.Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images in the folder {path} (searched it and its subfolders for "
                                        f"{', '.join('*' + s for s in IMAGE_SUFFIXES)}); name image files or "
                                        "a folder that holds some")
            paths += found
        else:
            paths.append(path)
    return paths


def read_gray(path: pathlib.Path):
    """uint8 (H, W) of any PNG/JPEG, RGB or gray; raises ValueError naming the file."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path}: cannot read image ({error})") from None


def main(argv):
    import numpy as np
    from PIL import Image

    from pcam_jax.analysis import METHODS, load
    from pcam_jax.evaluation.evaluate import trained_stages
    from pcam_jax.overlays import overlay

    if not flags.WORKDIR.value or not flags.OUT.value:
        raise ValueError("--workdir and --out are required")
    method = flags.METHOD.value
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        raise ValueError(f"unknown --method {method!r}; " + (f"did you mean {close[0]}? " if close else "")
                         + f"choose from {', '.join(METHODS)}")
    paths = image_paths(argv[1:])
    if not paths:
        raise ValueError("give one or more images (PNG/JPEG) or folders after the flags")
    stages = trained_stages(flags.WORKDIR.value)
    if not stages:
        raise FileNotFoundError(f"no checkpoints under {flags.WORKDIR.value}/checkpoints: train first "
                                "(`pcam-jax train`) or point --workdir at a run")
    run = load(flags.WORKDIR.value, stage=flags.STAGE.value or stages[-1],
               which=flags.which_checkpoint(flags.WHICH.value))
    out = pathlib.Path(flags.OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    failed, rows = [], []
    for path in paths:
        try:
            image = read_gray(path)
        except (ValueError, FileNotFoundError) as error:
            failed.append(str(path))
            print(f"skipped: {error}", file=sys.stderr)
            continue
        prob = float(run.predict(image)[0])
        saliency = run.maps(image, method=method)[0]
        name = f"{path.stem}_{method}.png"
        Image.fromarray(overlay(image.astype(np.float32) / 255.0, saliency)).save(out / name)
        rows.append((str(path), prob, int(prob > 0.5), name))
        print(f"{path}: p(abnormal) = {prob:.3f} -> {out / name}")
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "p_abnormal", "abnormal", "overlay"])
        writer.writerows(rows)
    print(f"{len(rows)} image(s) written to {out}; {len(failed)} could not be read")
    if failed:
        print("unreadable: " + ", ".join(failed), file=sys.stderr)
        raise SystemExit(1)
