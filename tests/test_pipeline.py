"""The tf.data pipeline on small in-memory record datasets of PNG-encoded images (32-48 px)."""

import io
import itertools
import math

import numpy as np
import PIL.Image
import pytest

tf = pytest.importorskip("tensorflow")

from pcam_jax import configs, geometry  # noqa: E402
from pcam_jax.data import DEVICE_KEYS, pipeline  # noqa: E402

S = 32  # tiny config image size
ALL_KEYS = set(DEVICE_KEYS) | set(pipeline.METADATA_KEYS)


def png(array: np.ndarray) -> bytes:
    """PNG bytes written by PIL (independent of the TF decoder under test)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_records(n=20, *, binary=False, labelled=(), seed=0, sizes=None, corrupt=()):
    """A record dataset as the builders store it: encoded images, masks, metadata.

    binary: image = 255 * mask (so an aligned mask equals the thresholded image).
    corrupt: indices whose image/mask bytes are garbage (must never be decoded).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = sizes[i] if sizes else (int(rng.integers(32, 49)), int(rng.integers(32, 49)))
        mask = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[top:top + rng.integers(4, h // 2), left:left + rng.integers(4, w // 3)] = 1
        mask[top:top + 3, left:left + w // 2] = 1  # an L shape: no symmetry hides a mistake
        image = 255 * mask if binary else rng.integers(0, 256, (h, w), dtype=np.uint8)
        rows.append(dict(
            image=b"garbage" if i in corrupt else png(image),
            lesion_mask=b"garbage" if i in corrupt else png(mask),
            label=np.int64(i % 2), has_mask=True, lesion_labelled=i in labelled,
            path=f"img{i:03d}.png", study_id=f"study{i // 3}", patient_id=f"p{i // 6}",
            body_part="SYNTHETIC"))
    columns = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    return tf.data.Dataset.from_tensor_slices(columns)


def tiny_config(**data):
    config = configs.get_config("tiny")
    config.data.update(data)
    return config


def take(iterator, count):
    return list(itertools.islice(iterator, count))


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_follow_the_contract():
    config = tiny_config()
    records = make_records(20, labelled=(1, 2, 3))
    streams = {
        "train": (pipeline.train_batches(config, records, seed=0), config.data.batch_size),
        "eval": (pipeline.eval_batches(config, records), config.data.eval_batch_size),
        "labelled": (pipeline.labelled_batches(config, records, seed=0),
                     config.data.labelled_batch_size),
    }
    for name, (stream, size) in streams.items():
        batch = next(stream)
        assert set(batch) == ALL_KEYS, name
        assert batch["image"].shape == (size, S, S, 1) and batch["image"].dtype == np.float32
        assert batch["mask"].shape == (size, S, S) and batch["mask"].dtype == np.float32
        assert batch["label"].shape == (size,) and batch["label"].dtype == np.int32
        for key in ("has_mask", "valid"):
            assert batch[key].shape == (size,) and batch[key].dtype == bool
        for key in pipeline.METADATA_KEYS:
            assert batch[key].dtype == object and all(isinstance(s, str) for s in batch[key])
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
        assert batch["mask"].sum() > 0, name
        assert batch["has_mask"].all() and batch["valid"].all()
        # label and metadata travel with their image: record i has label i % 2
        numbers = np.array([int(p[3:6]) for p in batch["path"]])
        np.testing.assert_array_equal(batch["label"], numbers % 2)
        np.testing.assert_array_equal(batch["study_id"],
                                      [f"study{k // 3}" for k in numbers])


def test_decode_scales_to_unit_range_and_converts_rgb():
    """A 32x32 image needs no resize: the batch is exactly pixels / 255, RGB made gray."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (S, S), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # MURA's RGB files are gray in RGB
    records = tf.data.Dataset.from_tensor_slices(dict(
        image=np.array([png(gray), png(rgb)]), label=np.array([0, 1]),
        path=np.array(["gray.png", "rgb.png"])))
    batch = next(pipeline.eval_batches(tiny_config(eval_batch_size=2), records))
    for row in range(2):
        np.testing.assert_allclose(batch["image"][row, ..., 0], gray / 255.0, atol=1e-6)
    assert not batch["has_mask"].any() and not batch["mask"].any()  # no mask field: zeros


def test_same_seed_same_batches_other_seed_differs():
    config = tiny_config()
    first = take(pipeline.train_batches(config, make_records(), seed=5), 4)
    again = take(pipeline.train_batches(config, make_records(), seed=5), 4)
    other = take(pipeline.train_batches(config, make_records(), seed=6), 4)
    for a, b in zip(first, again):
        assert_batches_equal(a, b)
    assert any((a["path"] != b["path"]).any() for a, b in zip(first, other))
    # each epoch is a new shuffle: 20 records, batch 8 -> 2 steps (16 images) per epoch
    orders = [np.concatenate([b["path"] for b in first[i:i + 2]]) for i in (0, 2)]
    assert len(set(orders[0])) == 16 and (orders[0] != orders[1]).any()


def test_start_step_reproduces_the_uninterrupted_stream_across_epochs():
    config = tiny_config()  # 20 records, batch 8: 2 steps per epoch
    full = take(pipeline.train_batches(config, make_records(), seed=1), 7)
    for start in (2, 3):  # an epoch's first step; mid-epoch, then across two more epochs
        resumed = take(pipeline.train_batches(config, make_records(), seed=1, start_step=start),
                       7 - start)
        for a, b in zip(full[start:], resumed):
            assert_batches_equal(a, b)


def test_skipped_examples_are_never_decoded():
    """Garbage bytes in the batches skipped by start_step cause no error."""
    config = tiny_config()  # 24 records, batch 8: 3 steps per epoch
    full = take(pipeline.train_batches(config, make_records(24), seed=2), 3)
    skipped = [int(p[3:6]) for b in full[:2] for p in b["path"]]
    records = make_records(24, corrupt=set(skipped))
    resumed = pipeline.train_batches(config, records, seed=2, start_step=2)
    assert_batches_equal(next(resumed), full[2])
    with pytest.raises(ValueError, match="img0"):  # reading them is an error naming the file
        next(pipeline.train_batches(config, records, seed=2))


def numpy_flip_rotate(image, angle, flip):
    """Slow reference: flip, then turn the content counter-clockwise by `angle` as displayed;
    each output pixel takes its nearest source pixel (0 outside). Also returns, per pixel,
    whether a source coordinate lies within 1e-3 of a rounding boundary."""
    height, width = image.shape
    ci, cj = (height - 1) / 2, (width - 1) / 2
    out = np.zeros_like(image)
    ambiguous = np.zeros(image.shape, bool)
    for i in range(height):
        for j in range(width):
            x, y = j - cj, ci - i  # mathematical axes: y up
            sx = math.cos(angle) * x + math.sin(angle) * y  # rotate back by -angle
            sy = -math.sin(angle) * x + math.cos(angle) * y
            col, row = cj + sx, ci - sy
            if flip:
                col = (width - 1) - col
            ambiguous[i, j] = min(abs(col % 1 - 0.5), abs(row % 1 - 0.5)) < 1e-3
            r, c = int(math.floor(row + 0.5)), int(math.floor(col + 0.5))
            if 0 <= r < height and 0 <= c < width:
                out[i, j] = image[r, c]
    return out, ambiguous


@pytest.mark.parametrize("angle,flip", [(0.7, False), (-0.45, True), (2.0, True)])
def test_flip_rotate_matches_numpy_nearest_reference(angle, flip):
    image = np.random.default_rng(4).random((20, 27)).astype(np.float32)  # H != W
    got = pipeline.flip_rotate(image[None, ..., None], tf.constant([angle]), tf.constant([flip]),
                               interpolation="NEAREST").numpy()[0, ..., 0]
    want, ambiguous = numpy_flip_rotate(image, angle, flip)
    np.testing.assert_array_equal(got[~ambiguous], want[~ambiguous])
    assert ambiguous.mean() < 0.05


def test_quarter_turn_is_rot90():
    image = np.random.default_rng(5).random((9, 9)).astype(np.float32)
    batch = np.stack([image, image])[..., None]
    got = pipeline.flip_rotate(batch, tf.constant([math.pi / 2] * 2), tf.constant([False, True]),
                               interpolation="NEAREST").numpy()[..., 0]
    np.testing.assert_array_equal(got[0], np.rot90(image))
    np.testing.assert_array_equal(got[1], np.rot90(np.fliplr(image)))


def test_augmentation_moves_image_and_mask_together():
    """image = 255 * mask, so the augmented mask must equal the thresholded augmented image."""
    config = tiny_config(rotate_degrees=30.0, flip=True)
    records = make_records(24, binary=True, labelled=range(0, 24, 3))
    plain = {p: (im, m) for b in pipeline.eval_batches(config, records)
             for p, im, m in zip(b["path"], b["image"], b["mask"])}
    for stream in (pipeline.train_batches(config, records, seed=0),
                   pipeline.labelled_batches(config, records, seed=0)):
        moved = 0
        for batch in take(stream, 3):
            np.testing.assert_array_equal(batch["mask"], batch["image"][..., 0] >= 0.5)
            assert batch["mask"].sum() > 0
            moved += sum(not np.array_equal(m, plain[p][1])
                         for p, m in zip(batch["path"], batch["mask"]))
        assert moved >= 6  # the transform really ran (on most images)


def test_no_augmentation_gives_the_plain_decode():
    config = tiny_config(rotate_degrees=0.0, flip=False)
    records = make_records(16)
    plain = {p: im for b in pipeline.eval_batches(config, records)
             for p, im in zip(b["path"], b["image"])}
    for batch in take(pipeline.train_batches(config, records, seed=0), 2):
        for path, image in zip(batch["path"], batch["image"]):
            np.testing.assert_array_equal(image, plain[path])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_yields_every_example_once(process_count):
    config = tiny_config(eval_batch_size=8)
    n = 21
    records = make_records(n)
    per_process = [list(pipeline.eval_batches(config, records, process_index=k,
                                              process_count=process_count))
                   for k in range(process_count)]
    want_batches = math.ceil(math.ceil(n / process_count) / (8 // process_count))
    assert [len(b) for b in per_process] == [want_batches] * process_count
    assert pipeline.num_eval_batches(config, n, process_count) == want_batches
    seen = []
    for batches in per_process:
        for batch in batches:
            assert batch["image"].shape[0] == 8 // process_count
            seen += list(batch["path"][batch["valid"]])
            padding = ~batch["valid"]
            assert not batch["image"][padding].any() and not batch["has_mask"][padding].any()
            assert all(p == "" for p in batch["path"][padding])
    assert sorted(seen) == [f"img{i:03d}.png" for i in range(n)]
    if process_count == 1:  # in stored order, padding only at the end
        assert seen == [f"img{i:03d}.png" for i in range(n)]
        assert [int(b["valid"].sum()) for b in per_process[0]] == [8, 8, 5]


def test_train_processes_read_disjoint_shards():
    config = tiny_config(batch_size=8)
    paths = [set(np.concatenate([b["path"] for b in take(
        pipeline.train_batches(config, make_records(20), seed=0, process_index=k,
                               process_count=2), 2)])) for k in range(2)]
    assert all(len(p) == 8 for p in paths) and not paths[0] & paths[1]


def test_pad_resize_keeps_the_aspect_ratio():
    wide = np.ones((20, 40, 1), np.float32)  # -> 16 x 32, 8 rows of padding above and below
    out = geometry.tf_resize(tf.constant(wide), S, "pad").numpy()[..., 0]
    want = np.zeros((S, S))
    want[8:24] = 1
    np.testing.assert_allclose(out, want, atol=1e-6)
    tall = np.ones((40, 30, 1), np.float32)  # -> 32 x 24, 4 columns left and right
    out = geometry.tf_resize(tf.constant(tall), S, "pad").numpy()[..., 0]
    want = np.zeros((S, S))
    want[:, 4:28] = 1
    np.testing.assert_allclose(out, want, atol=1e-6)
    # through the pipeline: the mask is padded the same way
    records = make_records(1, binary=True, sizes=[(20, 40)])
    batch = next(pipeline.eval_batches(tiny_config(resize="pad", eval_batch_size=1), records))
    assert not batch["image"][0, :8].any() and not batch["image"][0, 24:].any()
    np.testing.assert_array_equal(batch["mask"][0], batch["image"][0, ..., 0] >= 0.5)
    with pytest.raises(ValueError, match="stretch"):
        geometry.tf_resize(tf.constant(wide), S, "crop")


def test_labelled_stream_cycles_only_labelled_images():
    config = tiny_config(labelled_batch_size=4)
    labelled = {f"img{i:03d}.png" for i in (2, 7, 11, 12, 19)}
    records = make_records(20, labelled=(2, 7, 11, 12, 19))
    batches = take(pipeline.labelled_batches(config, records, seed=3), 10)
    paths = np.concatenate([b["path"] for b in batches])
    assert set(paths) == labelled
    # 40 draws = 8 reshuffled passes over the 5 images: each exactly 8 times
    assert all((paths == p).sum() == 8 for p in labelled)
    resumed = take(pipeline.labelled_batches(config, records, seed=3, start_step=3), 7)
    for a, b in zip(batches[3:], resumed):
        assert_batches_equal(a, b)


def test_attach_lesion_masks_by_path():
    """MURA-like records (placeholder masks, nothing labelled) + clinician masks by path."""
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (36, 44), dtype=np.uint8) for _ in range(6)]
    paths = [f"MURA-v1.1/train/XR_WRIST/p{i}/study1_positive/image1.png" for i in range(6)]
    records = tf.data.Dataset.from_tensor_slices(dict(
        image=np.array([png(im) for im in images]),
        lesion_mask=np.array([png(np.zeros((1, 1), np.uint8))] * 6),
        label=np.ones(6, np.int64), has_mask=np.zeros(6, bool),
        lesion_labelled=np.zeros(6, bool), path=np.array(paths)))
    assert pipeline.image_sizes(records) == {p: (36, 44) for p in paths}
    with pytest.raises(ValueError, match="no lesion-labelled"):
        pipeline.labelled_batches(tiny_config(), records, seed=0)
    unmasked = next(pipeline.train_batches(tiny_config(batch_size=4), records, seed=0))
    assert not unmasked["has_mask"].any() and not unmasked["mask"].any()  # placeholder unused
    masks = {}
    for k in (1, 4):
        masks[paths[k]] = np.zeros((36, 44), np.uint8)
        masks[paths[k]][5:20, 10:30] = 1
    config = tiny_config(labelled_batch_size=2, rotate_degrees=0.0, flip=False)
    attached = pipeline.attach_lesion_masks(records, masks)
    batch = next(pipeline.labelled_batches(config, attached, seed=0))
    assert sorted(batch["path"]) == sorted(masks) and batch["has_mask"].all()
    # the 36x44 mask stretched to 32x32: rows 5..20 -> ~4.4..17.8, columns 10..30 -> ~7.3..21.8
    for mask in batch["mask"]:
        assert mask[6:17, 8:21].all() and not mask[:4].any() and not mask[:, 23:].any()
    evaluated = next(pipeline.eval_batches(tiny_config(eval_batch_size=6), attached))
    np.testing.assert_array_equal(evaluated["has_mask"], [p in masks for p in paths])
    assert not evaluated["mask"][~evaluated["has_mask"]].any()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        pipeline.train_batches(tiny_config(batch_size=6), make_records(), seed=0, process_count=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.train_batches(tiny_config(batch_size=8), make_records(5), seed=0)
    wrong_size = tf.data.Dataset.from_tensor_slices(dict(
        image=np.array([png(np.zeros((32, 32), np.uint8))]),
        lesion_mask=np.array([png(np.zeros((30, 32), np.uint8))]),
        has_mask=np.array([True]), label=np.array([1]), path=np.array(["bad_mask.png"])))
    with pytest.raises(ValueError, match="bad_mask.png"):
        next(pipeline.eval_batches(tiny_config(eval_batch_size=1), wrong_size))


def test_load_records_from_the_synthetic_builder(tmp_path):
    config = configs.get_config("tiny")
    data_dir = str(tmp_path / "tfds")
    assert pipeline.num_examples(config, "train", data_dir) == config.synthetic.num_train
    records = pipeline.load_records(config, "train", data_dir)
    assert records.element_spec["image"].dtype == tf.string  # still PNG bytes: decoded later
    batch = next(pipeline.train_batches(config, records, seed=0))
    assert batch["image"].shape == (config.data.batch_size, S, S, 1) and batch["has_mask"].all()
    test = pipeline.load_records(config, "test", data_dir)
    paths = [p for b in pipeline.eval_batches(config, test) for p in b["path"][b["valid"]]]
    assert len(paths) == len(set(paths)) == config.synthetic.num_test
    labelled = next(pipeline.labelled_batches(config, records, seed=0))
    assert (labelled["label"] == 1).all()  # labelled images are abnormal, with lesions
    assert all(m.any() for m in labelled["mask"])
    with pytest.raises(ValueError, match="no split"):
        pipeline.load_records(config, "valid", data_dir)
