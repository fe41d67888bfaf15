"""Images per second of the training input pipeline, next to a plain Python/PIL loop.

    python experiments/benchmarks/input_pipeline.py                      # 320x320, batch 16
    python experiments/benchmarks/input_pipeline.py --images 64 --batches 4 --synthetic-images 32

Rows:
  mura-shaped PNGs   `pipeline.train_batches` over records read from PNG files of MURA-like
                     sizes (largest side 512, the other 300-512, a quarter RGB), made here
                     (never real MURA images): decode, gray, resize, flip, rotate, batch.
  synthetic          the same on the `synthetic_xray` builder (square PNGs of --synthetic-size,
                     with their lesion masks decoded and transformed too).
  PIL loop           one Python thread doing the same per image on the MURA-shaped files:
                     open, convert("L"), resize bilinear, random flip, rotate, /255 (no mask).
  uint8 cache        what the host does with data.augment_on="device": a gather of uint8
                     rows at training size from `pcam_jax.data.uint8_cache` (built once from
                     the same files, build time printed); flip/rotate/scale run in the step.
Images per second = batch / median seconds per batch after warm-up; the pipeline's rows
are steady state with prefetching, as training sees them. Images per core-second = images
/ CPU seconds the whole process (all its threads) spent making them: what a host with more
cores can multiply.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402  (experiments/benchmarks/common.py)


def write_mura_shaped_pngs(folder: str, count: int, seed: int = 0) -> list[str]:
    """PNG files shaped like MURA's: largest side 512, smooth anatomy-like content, some RGB."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        long_side, short_side = 512, int(rng.integers(300, 513))
        h, w = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        bone = np.exp(-((x - rng.uniform(0.3, 0.7)) / rng.uniform(0.05, 0.15)) ** 2)
        pixels = 40 + 150 * bone + 30 * y + rng.normal(0, 6, (h, w))
        gray = np.clip(pixels, 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(gray)
        if i % 4 == 0:
            image = image.convert("RGB")
        path = os.path.join(folder, f"image{i:04d}.png")
        image.save(path)
        paths.append(path)
    return paths


def records_from_files(paths: list[str]):
    """A record dataset (encoded bytes, as the builders store) over PNG files on disk."""
    import tensorflow as tf

    def record(index, path):
        return {"image": tf.io.read_file(path), "label": index % 2, "path": path,
                "study_id": path, "body_part": tf.constant("XR_WRIST"),
                "has_mask": tf.constant(False), "lesion_labelled": tf.constant(False)}

    return tf.data.Dataset.from_tensor_slices(paths).enumerate().map(record)


def pil_loop(paths: list[str], size: int, degrees: float, seed: int = 0):
    """The per-image work of the pipeline in one Python thread: a function making one batch."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    state = {"next": 0}

    def one_image(path):
        image = PIL.Image.open(path).convert("L").resize((size, size), PIL.Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        image = image.rotate(rng.uniform(-degrees, degrees), resample=PIL.Image.BILINEAR)
        return np.asarray(image, np.float32) / 255.0

    def batch_of(batch_size):
        rows = []
        for _ in range(batch_size):
            rows.append(one_image(paths[state["next"] % len(paths)]))
            state["next"] += 1
        return np.stack(rows)[..., None]

    return batch_of


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=320, help="MURA-shaped PNGs to write")
    parser.add_argument("--synthetic-images", type=int, default=256)
    parser.add_argument("--synthetic-size", type=int, default=320)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per row")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    common.apply_project_xla_flags()  # the allocator setting the training entry points run with

    from pcam_jax import configs
    from pcam_jax.data import pipeline

    config = configs.get_config("base")
    config.data.image_size, config.data.batch_size = args.size, args.batch
    print(common.environment_header())
    rows = []

    def add(name, make_batch, note):
        median, low, high = common.timeit(make_batch, warmup=args.warmup, rounds=args.batches)
        cpu_start = time.process_time()   # then the same number of batches again, on CPU time
        for _ in range(args.batches):
            make_batch()
        cpu = time.process_time() - cpu_start
        rows.append(dict(source=name, images_per_s=args.batch / median, s_per_batch=median,
                         min_s=low, max_s=high, per_core=args.batch * args.batches / max(cpu, 1e-9), note=note))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = write_mura_shaped_pngs(tmp, args.images)
        print(f"# wrote {len(paths)} MURA-shaped PNGs in {time.perf_counter() - start:.1f} s")
        stream = pipeline.train_batches(config, records_from_files(paths), seed=0)
        add("mura-shaped PNGs, tf.data", lambda: next(stream), f"{len(paths)} files")
        pil_batch = pil_loop(paths, args.size, config.data.rotate_degrees)
        add("mura-shaped PNGs, PIL loop", lambda: pil_batch(args.batch), "1 thread, image only")
        from pcam_jax.data import uint8_cache

        start = time.perf_counter()
        key = uint8_cache.cache_key(config, "train", len(paths))
        cache = uint8_cache.build(records_from_files(paths), config,
                                  uint8_cache.cache_directory(os.path.join(tmp, "cache"), key), key)
        print(f"# built the uint8 cache of {len(paths)} images in {time.perf_counter() - start:.1f} s")
        cached = uint8_cache.train_batches(config, cache, seed=0)
        add("mura-shaped PNGs, uint8 cache", lambda: next(cached), "augment_on=device: host part only")

        if not args.skip_synthetic:
            config.synthetic.update(
                image_size=args.synthetic_size, num_train=args.synthetic_images,
                num_model_selection=4, num_test=4, num_labelled=4, num_heldout_labelled=2)
            start = time.perf_counter()
            records = pipeline.load_records(config, "train", os.path.join(tmp, "tfds"))
            print(f"# generated {args.synthetic_images} synthetic images at "
                  f"{args.synthetic_size} px in {time.perf_counter() - start:.1f} s")
            stream = pipeline.train_batches(config, records, seed=0)
            add("synthetic_xray, tf.data", lambda: next(stream),
                f"{args.synthetic_images} images, masks too")

    print()
    print(common.format_table(rows, [("source", "source", ""), ("images_per_s", "img/s", ".1f"),
                                     ("s_per_batch", "s/batch", ".4f"), ("min_s", "min", ".4f"),
                                     ("max_s", "max", ".4f"), ("per_core", "img/core-s", ".1f"),
                                     ("note", "note", "")]))
    by_source = {row["source"]: row["per_core"] for row in rows}
    before, after = by_source["mura-shaped PNGs, tf.data"], by_source["mura-shaped PNGs, uint8 cache"]
    print(f"# host images per core-second: before (tf.data decode+resize+augment) {before:.1f}, "
          f"after (uint8 cache) {after:.1f}: {after / before:.1f}x; a 16-core host by this figure: "
          f"{16 * before:.0f} -> {16 * after:.0f} img/s")
    print(f"# batch {args.batch} at {args.size}x{args.size}, {args.batches} timed batches per "
          f"row after {args.warmup} warm-up")
    for row in rows:
        print(common.json_line(row))


if __name__ == "__main__":
    main()
