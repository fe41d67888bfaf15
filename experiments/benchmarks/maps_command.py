"""Images per second of `pcam-jax maps`: the batched path against the one-image loop it replaced.

    python experiments/benchmarks/maps_command.py                    # 48 PNGs at 320 px, 16 DICOMs 2048x2500
    python experiments/benchmarks/maps_command.py --pngs 16 --dicoms 4 --rounds 1

The default network (the paper's ResNet at 320 px, random weights with BatchNorm statistics from
a few training-mode passes), method positive_cam. Two folders written to a temporary directory:
8-bit PNGs of 320x320 and full-size 12-bit MONOCHROME1 DICOMs (computed-radiography size).
Both paths do the whole command's work: read each file, probability and map, overlay PNG
written at the file's size.

    loop     what `pcam-jax maps` did: per image `Run.predict` then `Run.maps` (two forwards,
             each padded to a chunk of 16, a resize traced per new image size), then the overlay
             (files read by `pcam_jax.data.radiographs`, so DICOMs are read right in both)
    batched  `pcam_jax.run.inference.predict_files` (batch 16, reading on threads, one forward per
             batch) with overlays written on two threads, as `pcam_jax.cli.maps`

Each path runs once to warm up (compilation) on the first files, then ``--rounds`` timed passes
over the whole folder, in turns; the table gives the median images/s and the ratio.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import common  # noqa: E402  (experiments/benchmarks/common.py)


def write_folders(root: pathlib.Path, pngs: int, dicoms: int, dicom_shape=(2500, 2048)):
    import numpy as np
    import PIL.Image

    from tests import dicom_files

    rng = np.random.default_rng(0)
    (root / "png").mkdir()
    (root / "dicom").mkdir()
    for i in range(pngs):
        image = rng.integers(0, 256, (40, 40)).astype(np.uint8)  # blocky structure, not pure noise
        PIL.Image.fromarray(image).resize((320, 320), PIL.Image.BILINEAR).save(root / "png" / f"img{i:03d}.png")
    base = rng.integers(0, 4096, (50, 41)).astype(np.float32)
    for i in range(dicoms):
        stored = np.asarray(PIL.Image.fromarray(np.roll(base, i, 0)).resize(
            dicom_shape[::-1], PIL.Image.BILINEAR)).astype(np.uint16)
        dicom_files.write(dicom_files.dataset(stored, bits_stored=12, photometric="MONOCHROME1"),
                          root / "dicom" / f"cr{i:03d}.dcm")
    return sorted((root / "png").iterdir()), sorted((root / "dicom").iterdir())


def loop_path(run, paths, out: pathlib.Path):
    """The one-image loop of the former `pcam-jax maps`."""
    import numpy as np
    from PIL import Image

    from pcam_jax.data.radiographs import read_radiograph_uint8
    from pcam_jax.maps.overlays import overlay

    for path in paths:
        image = read_radiograph_uint8(path)
        prob = float(run.predict(image)[0])
        saliency = run.maps(image, method="positive_cam")[0]
        Image.fromarray(overlay(image.astype(np.float32) / 255.0, saliency)).save(out / f"{path.stem}.png")
        assert 0.0 <= prob <= 1.0


def batched_path(run, paths, out: pathlib.Path, batch: int):
    """`pcam_jax.cli.maps`'s body."""
    from PIL import Image

    from pcam_jax.run import inference
    from pcam_jax.data.radiographs import to_uint8
    from pcam_jax.maps.overlays import overlay

    def write(result):
        Image.fromarray(overlay(to_uint8(result.image), result.saliency)).save(
            out / f"{pathlib.Path(result.path).stem}.png", compress_level=1)

    writes = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(2) as writer:
        for result in inference.predict_files(run, paths, method="positive_cam", batch_size=batch):
            assert result.error is None, result.error
            writes.append(writer.submit(write, result))
            while len(writes) > 64:
                writes.popleft().result()
        for done in writes:
            done.result()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pngs", type=int, default=48)
    parser.add_argument("--dicoms", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    common.apply_project_xla_flags()
    print(common.environment_header(), flush=True)

    import maps as maps_benchmark  # experiments/benchmarks/maps.py: the network with BatchNorm statistics

    from pcam_jax.run.analysis import Run
    from pcam_jax.configs import get_config

    config = get_config("mura")  # 320 px, the paper's network
    _, variables, _ = maps_benchmark.build(320, 4, seed=0)
    run = Run(config=config, variables=variables, stage=1, step=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        folders = dict(zip(("png 320x320", "dicom 2048x2500"), write_folders(tmp, args.pngs, args.dicoms)))
        paths_fns = {"loop": lambda paths, out: loop_path(run, paths, out),
                     "batched": lambda paths, out: batched_path(run, paths, out, args.batch)}
        for kind, paths in folders.items():
            if not paths:
                continue
            times = {name: [] for name in paths_fns}
            for name, fn in paths_fns.items():  # warm-up: compile on a few files
                out = tmp / f"warm_{name}"
                out.mkdir(exist_ok=True)
                fn(paths[:2], out)
            for r in range(args.rounds):
                for name, fn in paths_fns.items():
                    out = tmp / f"{kind.split()[0]}_{name}_{r}"
                    out.mkdir()
                    start = time.perf_counter()
                    fn(paths, out)
                    times[name].append(time.perf_counter() - start)
            ips = {name: len(paths) / statistics.median(t) for name, t in times.items()}
            for name in paths_fns:
                row = dict(inputs=kind, path=name, images=len(paths), images_per_s=ips[name],
                           median_s=statistics.median(times[name]))
                rows.append(row)
                print(common.json_line(row), flush=True)
            rows.append(dict(inputs=kind, path="ratio", images_per_s=ips["batched"] / ips["loop"]))
    print("\n| inputs | loop img/s | batched img/s | batched / loop |\n|---|---|---|---|")
    for kind in folders:
        got = {r["path"]: r["images_per_s"] for r in rows if r["inputs"] == kind}
        if got:
            print(f"| {kind} | {got['loop']:.2f} | {got['batched']:.2f} | {got['ratio']:.1f}x |")


if __name__ == "__main__":
    main()
