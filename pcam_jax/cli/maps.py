"""``pcam-jax maps --workdir DIR [--method positive_cam] [--batch_size 16] --out DIR IMAGE|FOLDER...``

Writes one overlay PNG per input image and ``predictions.csv`` (path, p_abnormal, abnormal,
overlay). Inputs: PNG (8 or 16 bit), TIFF, JPEG or DICOM, read by
`pcam_jax.data.radiographs` (DICOM through its header: window, rescale, MONOCHROME1), any size,
RGB or gray. Folders are searched for those suffixes and for suffix-less DICOM files (as PACS
exports write them). The work is `pcam_jax.run.inference.predict_files`: batches, one forward each
for probability and map, reading on threads; a progress bar on stderr. A file that cannot be
read is reported by name and the rest are still processed; the command then exits 1.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import pathlib
import sys

from pcam_jax.cli import flags

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")


def _is_dicom_without_suffix(path: pathlib.Path) -> bool:
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def image_paths(arguments) -> list[pathlib.Path]:
    """The files named, and the images found under each folder named (a folder with none is an error)."""
    paths = []
    for arg in arguments:
        path = pathlib.Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES or _is_dicom_without_suffix(p))
            if not found:
                raise FileNotFoundError(f"no images in the folder {path} (searched it and its subfolders for "
                                        f"{', '.join('*' + s for s in IMAGE_SUFFIXES)}); name image files or "
                                        "a folder that holds some")
            paths += found
        else:
            paths.append(path)
    return paths


def overlay_names(paths: list[pathlib.Path], method: str) -> list[str]:
    """``<stem>_<method>.png``; where stems repeat (MURA's image1.png), the parent folders are
    prefixed until the names are unique."""
    depth = 0
    while True:
        names = ["_".join(p.with_suffix("").parts[-1 - depth:]) + f"_{method}.png" for p in paths]
        if len(set(names)) == len(names) or depth > max((len(p.parts) for p in paths), default=0):
            return names
        depth += 1


def main(argv):
    from PIL import Image
    from tqdm.auto import tqdm

    from pcam_jax.data.radiographs import to_uint8
    from pcam_jax.maps import registry
    from pcam_jax.maps.overlays import overlay
    from pcam_jax.run import inference
    from pcam_jax.run.analysis import load
    from pcam_jax.training.checkpointing import trained_stages

    if not flags.WORKDIR.value or not flags.OUT.value:
        raise ValueError("--workdir and --out are required")
    method = flags.METHOD.value
    registry.get(method)  # an unknown --method is answered with the closest name and the list
    paths = image_paths(argv[1:])
    if not paths:
        raise ValueError("give one or more images (PNG, TIFF, JPEG, DICOM) or folders after the flags")
    stages = trained_stages(flags.WORKDIR.value)
    if not stages:
        raise FileNotFoundError(f"no checkpoints under {flags.WORKDIR.value}/checkpoints: train first "
                                "(`pcam-jax train`) or point --workdir at a run")
    run = load(flags.WORKDIR.value, stage=flags.STAGE.value or stages[-1],
               which=flags.which_checkpoint(flags.WHICH.value))
    out = pathlib.Path(flags.OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(map(str, paths), overlay_names(paths, method)))

    def write(result):
        # 8-bit grey: overlay's lookup-table path; fast zlib level (the PNG is a picture to look at)
        Image.fromarray(overlay(to_uint8(result.image), result.saliency)).save(
            out / names[result.path], compress_level=1)

    failed, rows, writes = [], [], collections.deque()
    bar = tqdm(total=len(paths), desc="maps", unit="img", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(2) as writer:
        for result in inference.predict_files(run, paths, method=method,
                                              batch_size=max(int(flags.BATCH_SIZE.value), 1)):
            bar.update()
            if result.error is not None:
                failed.append(result.path)
                bar.write(f"skipped: {result.error}", file=sys.stderr)
                continue
            writes.append(writer.submit(write, result))
            while len(writes) > 64:  # full-size images wait here to be drawn: bound them
                writes.popleft().result()
            rows.append((result.path, result.probability, int(result.probability > 0.5), names[result.path]))
        for done in writes:
            done.result()
    bar.close()
    with open(out / "predictions.csv", "w", newline="") as f:
        writer_csv = csv.writer(f)
        writer_csv.writerow(["path", "p_abnormal", "abnormal", "overlay"])
        writer_csv.writerows(rows)
    print(f"{len(rows)} image(s) written to {out} (probabilities in {out / 'predictions.csv'}); "
          f"{len(failed)} could not be read")
    if failed:
        print("unreadable: " + ", ".join(failed), file=sys.stderr)
        raise SystemExit(1)
