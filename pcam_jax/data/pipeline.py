"""The tf.data input pipeline: records -> numpy batches for training, evaluation and stage 3.

Three streams over any `tf.data.Dataset` of records (the contract in `pcam_jax.data`):

    train_batches     infinite, reshuffled every epoch, augmented, resumable at any step
    eval_batches      every example exactly once; the last batch padded with valid=False
    labelled_batches  infinite, cycles the few lesion-labelled images, augmented

and thin loaders (`load_records`, `num_examples`) that read the records from the TFDS
builders with the images left as encoded PNG bytes, so that shuffling and skipping move
bytes and decoding happens afterwards.

Determinism: epoch e is a shuffle of the records seeded by (seed, e), and the augmentation
of the example at global position p (counted from the start of the run, after shuffling)
is drawn by stateless ops keyed by (seed, p). A stream started at step N therefore yields
exactly the batches an uninterrupted stream yields from step N on, and the examples it
skips are read as bytes but never decoded. One tf.data iterator serves the whole run
(epochs are concatenated inside the graph, not by re-creating iterators).

Batch sizes in the config are global; each process gets `size // process_count`.
TensorFlow is imported here (through `pcam_jax.runtime.tensorflow`, which keeps it off the
GPUs); the rest of the project imports this module lazily.
"""

from collections.abc import Iterator, Mapping
import math

import numpy as np

from pcam_jax import geometry, runtime
from pcam_jax.data import normal_images, resolve_data_dir

tf = runtime.tensorflow()  # tf.data only needs the CPU; every accelerator is left to JAX

METADATA_KEYS = ("path", "study_id", "body_part", "hardware")
_ENCODED_MAGIC = (b"\x89PN", b"\xff\xd8\xff")  # PNG, JPEG
_TRAIN_SALT, _LABELLED_SALT = 1, 2
Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- transforms

def flip_rotate_transforms(angles, flips, height: int, width: int):
    """Projective transforms (B, 8) for "flip horizontally, then rotate about the centre".

    Args:
      angles: float32 (B,) radians; positive turns the content counter-clockwise as
        displayed (pi/2 equals `np.rot90`).
      flips: bool (B,), flip before rotating.
    Each row maps an output pixel (x, y) (column, row; pixel centres on integers) to the
    input pixel it samples, as `ImageProjectiveTransformV3` expects.
    """
    cos, sin = tf.cos(angles), tf.sin(angles)
    sign = tf.where(flips, -1.0, 1.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zeros = tf.zeros_like(angles)
    return tf.stack([
        sign * cos, -sign * sin, cx - sign * (cos * cx - sin * cy),
        sin, cos, cy - sin * cx - cos * cy,
        zeros, zeros], axis=1)


def flip_rotate(images, angles, flips, interpolation: str = "BILINEAR"):
    """Flip then rotate float32 images (B, H, W, C) with zero fill; one transform per image."""
    height, width = images.shape[1], images.shape[2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=flip_rotate_transforms(angles, flips, height, width),
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0), interpolation=interpolation, fill_mode="CONSTANT")


# ----------------------------------------------------------------------------- decoding

def _pixels(value, path, field: str):
    """uint8 (H, W, 1) from encoded PNG/JPEG bytes or an already decoded (H, W[, C]) tensor."""
    if value.dtype == tf.string:
        magic = tf.strings.substr(value, 0, 3)
        is_image = tf.reduce_any(tf.equal(magic, _ENCODED_MAGIC))
        check = tf.debugging.Assert(is_image, [
            f"The record's {field} is not an encoded PNG or JPEG; path:", path,
            "(prepare the dataset again, or pass images as uint8 arrays)"])
        with tf.control_dependencies([check]):
            return tf.io.decode_image(value, channels=1, expand_animations=False)
    if value.shape.rank == 2:
        value = value[..., None]
    if value.shape[-1] == 3:
        value = tf.image.rgb_to_grayscale(value)
    return tf.cast(value, tf.uint8)


def _decode(record, config, binary_mask: bool = True) -> dict:
    """A record -> an example: image (S,S,1) in [0,1], mask (S,S) in {0,1}, label, flags.

    binary_mask=False leaves the resized mask soft in [0, 1], for a later geometric
    transform to threshold once (so a mask stays equal to its thresholded twin image).
    """
    size, mode = config.data.image_size, config.data.resize
    path = record.get("path", tf.constant(""))
    image = _pixels(record["image"], path, "image")
    has_mask = tf.cast(record.get("has_mask", False), tf.bool)
    if "lesion_mask" in record and record["lesion_mask"].dtype == tf.string:
        has_mask = has_mask & (tf.strings.length(record["lesion_mask"]) > 0)  # "": none

    def resized_mask():  # the image's resize on the mask's pixels: aligned pixel for pixel
        mask = _pixels(record["lesion_mask"], path, "lesion_mask")
        same = tf.reduce_all(tf.equal(tf.shape(mask)[:2], tf.shape(image)[:2]))
        check = tf.debugging.Assert(same, [
            "lesion_mask and image differ in size for", path, tf.shape(mask), tf.shape(image)])
        with tf.control_dependencies([check]):
            return geometry.tf_resize(tf.cast(mask > 0, tf.float32), size, mode)[..., 0]

    # Placeholder masks (MURA) are neither decoded nor resized: zeros instead.
    mask = (tf.cond(has_mask, resized_mask, lambda: tf.zeros((size, size)))
            if "lesion_mask" in record else tf.zeros((size, size)))
    image = tf.ensure_shape(geometry.tf_resize(tf.cast(image, tf.float32) / 255.0, size, mode), (size, size, 1))
    mask = tf.ensure_shape(mask, (size, size))
    example = {
        "image": image,
        "label": tf.cast(record["label"], tf.int32),
        "mask": tf.cast(mask >= 0.5, tf.float32) if binary_mask else mask,
        "has_mask": has_mask,
        "valid": tf.constant(True),
    }
    for key in METADATA_KEYS:
        example[key] = record.get(key, tf.constant(""))
    return example


def _padding_example(size: int) -> dict:
    """A row that fills up the last evaluation batch; valid=False marks it."""
    return {"image": tf.zeros((size, size, 1)), "label": tf.constant(0, tf.int32),
            "mask": tf.zeros((size, size)), "has_mask": tf.constant(False),
            "valid": tf.constant(False), **{k: tf.constant("") for k in METADATA_KEYS}}


# ----------------------------------------------------------------------------- streams

def _stream_seed(seed: int, *salts: int) -> int:
    """A well-mixed 62-bit integer from the user's seed and stream salts."""
    state = np.random.SeedSequence([int(seed) % 2**63, *salts]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(2))


def count_records(records) -> int:
    """Number of records; counts by reading bytes when tf.data cannot tell."""
    n = int(records.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The record dataset is infinite; pass one pass over a split.")
    if n < 0:
        n = int(records.reduce(np.int64(0), lambda count, _: count + 1))
    return n


def _per_process(size: int, process_count: int, name: str) -> int:
    if size % process_count or size < process_count:
        raise ValueError(f"config.data.{name}={size} must be a positive multiple of the "
                         f"number of processes ({process_count}).")
    return size // process_count


def _shuffled_epochs(records, *, epoch_length: int, start_epoch: int, seed: int,
                     shuffle_buffer: int):
    """Infinite dataset of (global position, record); epoch e = shuffle(records, (seed, e)).

    Each epoch is the first `epoch_length` records of its shuffle; position counts from
    the start of epoch 0, so it identifies an example of the run independently of where
    the stream was started.
    """
    seed = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        epoch_seed = tf.random.stateless_uniform(
            [], seed=tf.stack([seed, epoch]), minval=0, maxval=2**31 - 1, dtype=tf.int64)
        shuffled = records.shuffle(shuffle_buffer, seed=epoch_seed).take(epoch_length)
        return shuffled.enumerate().map(lambda i, r: (epoch * epoch_length + i, r))

    return tf.data.Dataset.range(start_epoch, 2**62).flat_map(one_epoch)


def _augmented_batches(config, stream, batch_size: int, seed: int):
    """(position, record) stream -> augmented, batched, prefetched numpy batches."""
    degrees, flip = float(config.data.rotate_degrees), bool(config.data.flip)
    seed = tf.constant(seed, tf.int64)

    def prepare(position, record):
        example = _decode(record, config, binary_mask=False)
        if degrees or flip:
            draw = tf.random.stateless_uniform([2], seed=tf.stack([seed, position]))
            angle = (2.0 * draw[:1] - 1.0) * math.radians(degrees)
            flips = draw[1:] < 0.5 if flip else tf.constant([False])

            def image_and_mask():  # two channels of one transform: the same geometry
                both = tf.concat([example["image"], example["mask"][..., None]], -1)
                both = flip_rotate(both[None], angle, flips)[0]
                return both[..., :1], both[..., 1]

            def image_only():  # no annotation: the mask is zeros, skip half the resampling
                return flip_rotate(example["image"][None], angle, flips)[0], example["mask"]

            image, mask = tf.cond(example["has_mask"], image_and_mask, image_only)
            example["image"], example["mask"] = tf.clip_by_value(image, 0.0, 1.0), mask
        example["mask"] = tf.cast(example["mask"] >= 0.5, tf.float32)  # the one threshold
        return example

    # Per example inside the parallel map: decoding and resampling spread over all cores.
    ds = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return _numpy_batches(ds.prefetch(config.data.prefetch))


def _numpy_batches(ds) -> Iterator[Batch]:
    """Numpy batches with metadata as object arrays of str; TF errors made readable."""
    options = tf.data.Options()
    options.deterministic = True
    try:
        for batch in ds.with_options(options).as_numpy_iterator():
            for key in METADATA_KEYS:
                batch[key] = np.array([s.decode() for s in batch[key]], dtype=object)
            yield batch
    except GeneratorExit:  # closed early (often at interpreter exit): nothing to report
        raise
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"The input pipeline could not read a record: {error.message}") from None


def steps_per_epoch(config, num_examples: int, process_count: int = 1) -> int:
    """Training steps in one epoch: each process sees num_examples // process_count examples
    per epoch in whole batches of batch_size // process_count (the rest is dropped)."""
    batch = _per_process(config.data.batch_size, process_count, "batch_size")
    steps = (num_examples // process_count) // batch
    if steps == 0:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of "
                         f"{config.data.batch_size}; lower config.data.batch_size.")
    return steps


def train_batches(config, records, *, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[Batch]:
    """Infinite iterator of augmented training batches (the contract's keys, numpy).

    This process reads the records `process_index::process_count`; every epoch it
    reshuffles them (seeded by seed and epoch) and yields `steps_per_epoch` batches of
    `batch_size // process_count`. Starting at `start_step` yields exactly what an
    uninterrupted stream yields from that step on.
    """
    batch = _per_process(config.data.batch_size, process_count, "batch_size")
    steps = steps_per_epoch(config, count_records(records), process_count)
    start_epoch, skip = divmod(start_step, steps)
    stream = _shuffled_epochs(
        records.shard(process_count, process_index), epoch_length=steps * batch,
        start_epoch=start_epoch, shuffle_buffer=config.data.shuffle_buffer,
        seed=_stream_seed(seed, _TRAIN_SALT, process_index, 0))
    return _augmented_batches(config, stream.skip(skip * batch), batch,
                              _stream_seed(seed, _TRAIN_SALT, process_index, 1))


def num_eval_batches(config, num_examples: int, process_count: int = 1) -> int:
    """Batches every process yields in `eval_batches` (equal on all processes)."""
    batch = _per_process(config.data.eval_batch_size, process_count, "eval_batch_size")
    return -(-(-(-num_examples // process_count)) // batch)


def eval_batches(config, records, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
    """Every record exactly once, in order, unaugmented, in batches of
    `eval_batch_size // process_count`; padding rows (valid=False) fill the last batches so
    that every process yields `num_eval_batches` batches."""
    batch = _per_process(config.data.eval_batch_size, process_count, "eval_batch_size")
    n = count_records(records)
    if n == 0:
        raise ValueError("The evaluation split has no records.")
    mine = len(range(process_index, n, process_count))
    padding = num_eval_batches(config, n, process_count) * batch - mine
    ds = records.shard(process_count, process_index).map(
        lambda r: _decode(r, config), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(_padding_example(config.data.image_size)).repeat(padding))
    return _numpy_batches(ds.batch(batch, drop_remainder=True).prefetch(config.data.prefetch))


def attach_lesion_masks(records, masks: Mapping[str, np.ndarray]):
    """Records with clinician masks attached by path (for MURA and other real data).

    Args:
      masks: {path: uint8 (H, W)} nonzero inside a lesion, as from
        `pcam_jax.data.lesions.load_lesion_masks`; each the size of its image.
    Returns the same records; those whose path has a mask get it as `lesion_mask`
    (encoded PNG) with has_mask and lesion_labelled True, all others have both False.
    """
    if not masks:
        raise ValueError("No lesion masks to attach (the annotation source was empty).")
    paths = list(masks)
    encoded = []
    for path in paths:
        mask = np.asarray(masks[path])
        if mask.ndim != 2:
            raise ValueError(f"Lesion mask for {path!r} has shape {mask.shape}; expected (H, W).")
        encoded.append(tf.io.encode_png((mask > 0).astype(np.uint8)[..., None]).numpy())
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(paths), tf.constant(encoded)),
        default_value=b"")

    def attach(record):
        record = dict(record)
        record["lesion_mask"] = table.lookup(record["path"])
        record["has_mask"] = tf.strings.length(record["lesion_mask"]) > 0
        record["lesion_labelled"] = record["has_mask"]
        return record

    return records.map(attach)


def labelled_batches(config, records, *, seed: int, start_step: int = 0, process_index: int = 0,
                     process_count: int = 1, normal: bool = False) -> Iterator[Batch]:
    """Infinite iterator cycling the records with lesion_labelled True, augmented (image and
    mask alike), in batches of `labelled_batch_size // process_count`; batches run across the
    reshuffles, so a set smaller than a batch still works. Resumable like `train_batches`. For MURA
    pass `attach_lesion_masks(train_records, masks)`. ``normal``: the label-0 records instead, in
    batches of `normal_images.per_process` (`pcam_jax.data.normal_images`), on their own stream."""
    if "lesion_labelled" not in records.element_spec:
        raise ValueError("The records have no lesion_labelled field; attach clinician masks "
                         "with attach_lesion_masks(records, load_lesion_masks(...)).")
    batch, salt = ((normal_images.per_process(config, process_count), normal_images.SALT) if normal else
                   (_per_process(config.data.labelled_batch_size, process_count, "labelled_batch_size"), _LABELLED_SALT))
    labelled = records.filter(lambda r: tf.equal(r["label"], 0) if normal else r["lesion_labelled"]).shard(
        process_count, process_index).cache()  # a few images, kept as bytes in memory
    n = count_records(labelled)
    if n == 0:
        raise ValueError(f"Process {process_index} has no {'normal' if normal else 'lesion-labelled'} records "
                         "(or fewer than processes).")
    start_epoch, skip = divmod(start_step * batch, n)
    stream = _shuffled_epochs(labelled, epoch_length=n, start_epoch=start_epoch, shuffle_buffer=n,
                              seed=_stream_seed(seed, salt, process_index, 0))
    return _augmented_batches(config, stream.skip(skip), batch, _stream_seed(seed, salt, process_index, 1))


def image_sizes(records) -> dict[str, tuple[int, int]]:
    """{path: (height, width)} of every record, from the PNG/JPEG headers (nothing decoded);
    what `pcam_jax.data.lesions.load_lesion_masks` checks annotations against."""
    def size(record):
        image = record["image"]
        if image.dtype != tf.string:
            return record["path"], tf.shape(image)[:2]
        ihdr = tf.io.decode_raw(tf.strings.substr(image, 16, 8), tf.uint8)  # width, height
        big_endian = tf.reduce_sum(
            tf.reshape(tf.cast(ihdr, tf.int32), (2, 4)) * [2**24, 2**16, 2**8, 1], axis=1)
        is_png = tf.equal(tf.strings.substr(image, 0, 3), _ENCODED_MAGIC[0])
        return record["path"], tf.cond(is_png, lambda: big_endian[::-1],
                                       lambda: tf.image.extract_jpeg_shape(image)[:2])

    return {path.decode(): (int(h), int(w))
            for path, (h, w) in records.map(size).as_numpy_iterator()}


# ----------------------------------------------------------------------------- loaders

def _builder(config, data_dir: str | None):
    data_dir, data = resolve_data_dir(config, data_dir), config.data
    from pcam_jax.data import folder, fracatlas, mura, synthetic_builder

    if data.dataset == "synthetic":
        return synthetic_builder.prepare(config.synthetic, data_dir)
    if data.dataset == "fracatlas":
        return fracatlas.prepared_builder(data_dir, model_selection_fraction=data.model_selection_fraction)
    if data.dataset == "folder":
        return folder.prepared_builder(data_dir, root=data.folder_root or None, csv_name=data.folder_csv,
                                       model_selection_fraction=data.model_selection_fraction,
                                       test_fraction=data.folder_test_fraction)
    if data.dataset != "mura":
        raise ValueError(f"config.data.dataset must be synthetic, mura, fracatlas or folder, got {data.dataset!r}.")
    builder = mura.builder(data_dir, model_selection_fraction=data.model_selection_fraction,
                           skip_corrupt=data.skip_corrupt)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"MURA is not prepared in {builder.data_dir!r}; run `pcam-jax prepare mura "
            "--manual-dir DIR` first (see pcam_jax.data.mura.MANUAL_DOWNLOAD_INSTRUCTIONS).")
    return builder


def load_records(config, split: str, data_dir: str | None = None):
    """The records of one split (or "a+b+c": several, a whole external set), images and masks as
    encoded bytes, in stored order."""
    import tensorflow_datasets as tfds

    builder = _builder(config, data_dir)
    if any(part not in builder.info.splits for part in split.split("+")):
        raise ValueError(f"Dataset {builder.name!r} has no split {split!r}; it has "
                         f"{sorted(builder.info.splits)}.")
    features = builder.info.features
    decoders = {key: tfds.decode.SkipDecoding() for key in ("image", "lesion_mask")
                if key in features and isinstance(features[key], tfds.features.Image)}
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)


def num_examples(config, split: str, data_dir: str | None = None) -> int:
    """Number of records in one split."""
    builder = _builder(config, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"Dataset {builder.name!r} has no split {split!r}.")
    return builder.info.splits[split].num_examples
