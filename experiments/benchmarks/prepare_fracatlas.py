"""Where `pcam-jax prepare fracatlas` spends its time, on the FracAtlas copy (prints figures).

    python experiments/benchmarks/prepare_fracatlas.py [--root ../shared/fracatlas/FracAtlas]

Times each part of the build on its own, single process: reading and checking every file
(header, EXIF, end-of-image marker), rasterising the COCO polygons, encoding the masks as PNG,
and, for comparison, what `prepare folder` did per image (decode + re-encode as PNG) on a sample.
"""

import argparse
import io
import time

import PIL.Image
from etils import epath

from pcam_jax.data import fracatlas, lesions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="../shared/fracatlas/FracAtlas")
    parser.add_argument("--reencode_sample", type=int, default=40)
    args = parser.parse_args()
    root = fracatlas.find_root(args.root)
    t = time.perf_counter()
    entries, _, _ = fracatlas.index(epath.Path(root), 0.15, 0.2)
    timings = {"index (dataset.csv, listing)": time.perf_counter() - t}
    t = time.perf_counter()
    sizes, stored = {}, {}
    for e in entries:
        try:
            stored[e.path], sizes[e.image_id], _ = fracatlas.open_upright(root / e.path)
        except ValueError:
            pass
    timings["read + check every file"] = time.perf_counter() - t
    t = time.perf_counter()
    masks = lesions.masks_from_coco(root / fracatlas.COCO, sizes, unknown=[], report=lesions.LabelReport())
    timings["rasterise COCO polygons"] = time.perf_counter() - t
    t = time.perf_counter()
    encoded = sum(len(fracatlas.encode_mask(m)) for m in masks.values())
    timings["encode masks (PNG, zlib 1)"] = time.perf_counter() - t
    sample = [e for e in entries if isinstance(stored.get(e.path), bytes)][:args.reencode_sample]
    t = time.perf_counter()
    for e in sample:
        buffer = io.BytesIO()
        PIL.Image.open(io.BytesIO(stored[e.path])).convert("L").save(buffer, "PNG")
    per_image = (time.perf_counter() - t) / len(sample)
    print(f"{len(entries)} images, {len(masks)} masks ({encoded / 2**20:.1f} MiB of mask PNG)")
    for name, seconds in timings.items():
        print(f"  {name:<32} {seconds:6.1f} s")
    print(f"  total                            {sum(timings.values()):6.1f} s (+ TFDS writing)")
    print(f"  for comparison, decode + PNG re-encode: {per_image * 1000:.0f} ms/image on {len(sample)} images "
          f"-> {per_image * len(entries):.0f} s for all")


if __name__ == "__main__":
    main()
