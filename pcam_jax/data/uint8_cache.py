"""Images stored once at training resolution as uint8, and the training streams that read them.

With ``config.data.augment_on="device"`` the host's per-step work is a gather of uint8 rows
from memory-mapped arrays: decoding and resizing happened once, when the cache was built,
and the flip, rotation and scaling to [0, 1] happen in the jitted train step
(`pcam_jax.data.device_augment`).

Layout: ``<data_dir>/pcam_jax_uint8/<dataset>-<split>-<size>px-<resize>/`` with ``images.npy``
(N, S, S) uint8 (the host path's decode and resize, rounded), ``masks.npy`` (N, S, S) uint8
(the resized soft mask x 255: thresholded after the transform, as on the host), and
``meta.json`` (labels, flags, paths and the key). ``meta.json`` is written last, so a
half-built cache is rebuilt; a cache whose key (dataset and its build settings, split, size,
resize, number of records, the clinician lesion labels joined into the train split, version)
differs from what the config asks for is rebuilt. ``pcam-jax prepare`` builds the train
split's cache ahead of training (`pcam_jax.cli.prepare.prepare_uint8_cache`); otherwise the
first training run that reads it builds it.

Order: epoch ``e`` of a process is a permutation of its records (rows ``process_index::process_count``)
seeded by (seed, process, e); step ``s`` takes its rows ``s * b ... s * b + b - 1`` of that
sequence, so a stream started at any step equals the uninterrupted stream from there on.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from typing import Callable, Iterator

import numpy as np

CACHE_VERSION = 3   # 2: the key holds the dataset's build settings and the lesion labels' fingerprint; 3: hardware
METADATA_KEYS = ("path", "study_id", "body_part", "hardware")
_TRAIN_SALT, _LABELLED_SALT = 11, 12


class SplitCache:
    """One split's uint8 arrays (memory-mapped, read-only) and per-example fields."""

    def __init__(self, directory: pathlib.Path, *, built: bool = False):
        self.directory = directory
        self.built = built   # True when this call built it (`build`), False when an existing cache was opened
        self.meta = json.loads((directory / "meta.json").read_text())
        self.images = np.load(directory / "images.npy", mmap_mode="r")
        self.masks = np.load(directory / "masks.npy", mmap_mode="r")
        self.fields = {k: np.asarray(v) for k, v in self.meta["fields"].items()}

    def __len__(self) -> int:
        return int(self.meta["key"]["num_examples"])

    def size_bytes(self) -> int:
        """Bytes on disk: the image and mask arrays and the metadata."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def rows(self, index: np.ndarray) -> dict:
        """The examples at ``index`` (sorted reads are faster; order is restored) as a batch."""
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        batch = {"image": np.asarray(self.images[sorted_index])[inverse][..., None],
                 "mask": np.asarray(self.masks[sorted_index])[inverse],
                 "valid": np.ones(len(index), bool)}
        for key, values in self.fields.items():
            batch[key] = values[index]
        for key in METADATA_KEYS:
            batch[key] = batch[key].astype(object)
        return batch


def lesion_labels_fingerprint(config) -> str:
    """A hash of ``config.stage3.lesion_labels`` (names and contents of every file, how unmatched
    entries are treated): the masks they join into the train split are stored in its cache.
    ``""`` without labels. A dataset with its own masks: how its N are chosen (N, the seed, and the
    contents of ``config.stage3.labelled_list`` where one is set)."""
    from pcam_jax.data import clinician_labels

    unmatched = str(config.stage3.unmatched_labels)
    if config.data.dataset in clinician_labels.CHOOSES_LABELLED:  # its own masks, N chosen when read
        chosen = f"num_labelled={int(config.stage3.num_labelled)},seed={int(config.stage3.labelled_seed)}"
        if config.stage3.labelled_list:   # or the first N of a ranked list: its contents choose
            chosen += f",list={_sources_digest([config.stage3.labelled_list], unmatched)}"
        return chosen
    sources = clinician_labels.parse_sources(config.stage3.lesion_labels)
    return _sources_digest(sources, unmatched) if sources else ""


def _sources_digest(sources, unmatched: str) -> str:
    """16 hex digits of the names and contents of every file of ``sources`` (files or folders)."""
    digest = hashlib.sha256(unmatched.encode())
    for source in sources:
        root = pathlib.Path(source).expanduser()
        digest.update(b"\0source\0" + source.encode())
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(b"\0file\0" + str(path.relative_to(root) if root.is_dir() else path.name).encode())
            digest.update(path.read_bytes() if path.is_file() else b"\0missing\0")
    return digest.hexdigest()[:16]


def dataset_settings(config) -> str:
    """What else selects the records of ``config.data.dataset`` in a data dir: the synthetic
    BuilderConfig (a hash of ``config.synthetic``), MURA's and a folder's split settings."""
    data = config.data
    if data.dataset == "synthetic":
        from pcam_jax.data import synthetic_builder

        return synthetic_builder.config_name(config.synthetic)
    if data.dataset == "fracatlas":
        return f"model_selection={data.model_selection_fraction}"
    if data.dataset == "mura":
        return f"model_selection={data.model_selection_fraction},skip_corrupt={bool(data.skip_corrupt)}"
    if data.dataset == "folder":
        return (f"root={data.folder_root},csv={data.folder_csv},model_selection={data.model_selection_fraction},"
                f"test={data.folder_test_fraction}")
    return ""


def cache_key(config, split: str, num_examples: int) -> dict:
    return {"dataset": str(config.data.dataset), "settings": dataset_settings(config), "split": split,
            "image_size": int(config.data.image_size), "resize": str(config.data.resize),
            "num_examples": int(num_examples),
            "lesion_labels": lesion_labels_fingerprint(config) if split == "train" else "",
            "version": CACHE_VERSION}


def cache_directory(data_dir, key: dict) -> pathlib.Path:
    name = f"{key['dataset']}-{key['split']}-{key['image_size']}px-{key['resize']}"
    return pathlib.Path(data_dir).expanduser() / "pcam_jax_uint8" / name


def is_current(directory: pathlib.Path, key: dict) -> bool:
    try:
        return json.loads((directory / "meta.json").read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def build(records, config, directory: pathlib.Path, key: dict, *, progress: bool = False) -> SplitCache:
    """Decode and resize every record once (tf.data, all cores) into ``directory``; returns it opened.

    ``progress``: a progress bar (tqdm, on stderr) counting the images.
    """
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    n, size = key["num_examples"], key["image_size"]
    images = np.lib.format.open_memmap(directory / "images.npy", "w+", np.uint8, (n, size, size))
    masks = np.lib.format.open_memmap(directory / "masks.npy", "w+", np.uint8, (n, size, size))
    fields = {k: [] for k in ("label", "has_mask", "lesion_labelled", *METADATA_KEYS)}

    def to_uint8(record):
        # The host path's decode and resize (one definition of the geometry), soft mask kept.
        example = pipeline._decode(record, config, binary_mask=False)
        pixels = lambda x: tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
        return {"image": pixels(example["image"][..., 0]), "mask": pixels(example["mask"]),
                "label": example["label"], "has_mask": example["has_mask"],
                "lesion_labelled": tf.cast(record.get("lesion_labelled", False), tf.bool),
                **{k: example[k] for k in METADATA_KEYS}}

    ds = records.map(to_uint8, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"uint8 cache {directory.name}", unit="img", dynamic_ncols=True)
    start = 0
    for batch in ds.as_numpy_iterator():
        stop = start + len(batch["label"])
        if stop > n:
            raise ValueError(f"the {key['split']} split has more records than its {n} recorded examples")
        images[start:stop], masks[start:stop] = batch["image"], batch["mask"]
        for k in fields:
            values = batch[k]
            fields[k] += [v.decode() for v in values] if k in METADATA_KEYS else values.tolist()
        start = stop
        if bar is not None:
            bar.update(len(batch["label"]))
    if bar is not None:
        bar.close()
    if start != n:
        raise ValueError(f"the {key['split']} split has {start} records, not the {n} its metadata says")
    images.flush(), masks.flush()
    del images, masks
    meta = {"key": key, "fields": fields}
    temporary = directory / "meta.json.tmp"
    temporary.write_text(json.dumps(meta))
    os.replace(temporary, directory / "meta.json")   # last: marks the cache complete
    return SplitCache(directory, built=True)


def open_or_build(config, split: str, data_dir, records: Callable[[], object], num_examples: int, *,
                  progress: bool = False) -> SplitCache:
    """The split's cache for ``config`` (size, resize), built from ``records()`` when absent or stale.

    Multi-process: process 0 builds, the others wait for it (``data_dir`` must be shared).
    The result's ``built`` says whether this call built it. ``progress``: see `build`.
    """
    import jax

    key = cache_key(config, split, num_examples)
    directory = cache_directory(data_dir, key)
    built = None
    if not is_current(directory, key) and jax.process_index() == 0:
        built = build(records(), config, directory, key, progress=progress)
    if jax.process_count() > 1:  # through the coordination service: no device, no compile
        import orbax.checkpoint as ocp

        ocp.multihost.sync_global_processes(f"pcam_jax uint8 cache {directory.name}", timeout=24 * 3600)
    if not is_current(directory, key):
        raise FileNotFoundError(f"the uint8 cache {directory} is missing or stale after process 0 built it: "
                                "data_dir must be a directory every process shares")
    return SplitCache(directory, built=built is not None)


def _my_rows(n: int, process_index: int, process_count: int) -> np.ndarray:
    return np.arange(process_index, n, process_count)


def _permutation(rows: np.ndarray, seed: int, salt: int, process_index: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed) % 2**63, salt, process_index, epoch]).permutation(rows)


def train_batches(config, cache: SplitCache, *, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
    """Infinite uint8 training batches of ``batch_size // process_count`` (unaugmented: the
    step augments); ``steps_per_epoch`` whole batches per epoch, as `pipeline.train_batches`."""
    from pcam_jax.data import pipeline

    batch = pipeline._per_process(int(config.data.batch_size), process_count, "batch_size")
    steps = pipeline.steps_per_epoch(config, len(cache), process_count)
    rows = _my_rows(len(cache), process_index, process_count)
    step = start_step
    while True:
        epoch, within = divmod(step, steps)
        order = _permutation(rows, seed, _TRAIN_SALT, process_index, epoch)
        yield cache.rows(order[within * batch:(within + 1) * batch])
        step += 1


def labelled_batches(config, cache: SplitCache, *, seed: int, start_step: int = 0, process_index: int = 0,
                     process_count: int = 1, normal: bool = False) -> Iterator[dict]:
    """Infinite uint8 batches cycling this process's lesion-labelled rows, reshuffled every pass;
    ``normal``: the label-0 rows instead (`pcam_jax.data.normal_images`), on their own stream."""
    from pcam_jax.data import normal_images, pipeline

    batch = (normal_images.per_process(config, process_count) if normal else
             pipeline._per_process(int(config.data.labelled_batch_size), process_count, "labelled_batch_size"))
    salt = _LABELLED_SALT + normal_images.SALT if normal else _LABELLED_SALT
    chosen = cache.fields["label"] == 0 if normal else cache.fields["lesion_labelled"]
    labelled = np.flatnonzero(chosen)[process_index::process_count]
    if len(labelled) == 0:
        raise ValueError(f"Process {process_index} has no {'normal' if normal else 'lesion-labelled'} records "
                         f"in {cache.directory}")
    position = start_step * batch
    while True:
        positions = position + np.arange(batch)
        epochs, offsets = np.divmod(positions, len(labelled))
        index = np.array([_permutation(labelled, seed, salt, process_index, e)[o]
                          for e, o in zip(epochs, offsets)])
        yield cache.rows(index)
        position += batch
