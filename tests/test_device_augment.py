"""On-device augmentation against the host path's TF transform; the uint8 cache; exact resume."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pcam_jax import configs  # noqa: E402
from pcam_jax.data import device_augment, pipeline, uint8_cache  # noqa: E402
from tests.test_pipeline import make_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py


@pytest.mark.parametrize("angle,flip", [(0.3, False), (-0.5, True), (np.pi / 2, False), (1.0, True)])
def test_flip_rotate_matches_the_host_transform(angle, flip):
    images = np.random.default_rng(0).uniform(0, 1, (2, 24, 20, 2)).astype(np.float32)
    angles, flips = np.full(2, angle, np.float32), np.full(2, flip)
    want = pipeline.flip_rotate(tf.constant(images), tf.constant(angles), tf.constant(flips)).numpy()
    got = np.asarray(jax.jit(device_augment.flip_rotate)(images, angles, flips))
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_quarter_turn_is_rot90_and_flip_is_mirror():
    image = np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 1)).astype(np.float32)
    turned = device_augment.flip_rotate(image, jnp.array([np.pi / 2]), jnp.array([False]))
    np.testing.assert_allclose(np.asarray(turned)[0, ..., 0], np.rot90(image[0, ..., 0]), atol=1e-5)
    mirrored = device_augment.flip_rotate(image, jnp.array([0.0]), jnp.array([True]))
    np.testing.assert_allclose(np.asarray(mirrored)[0, ..., 0], image[0, :, ::-1, 0], atol=1e-6)


def test_image_and_mask_move_together_and_draws_are_keyed_by_position():
    rng = np.random.default_rng(2)
    mask = (rng.uniform(size=(6, 24, 24)) > 0.7).astype(np.uint8) * 255
    batch = {"image": mask[..., None], "mask": mask, "label": np.zeros(6, np.int32)}
    key = jax.random.key(3)
    out = device_augment.augment_batch(batch, key, jnp.int32(10), degrees=30.0, flip=True)
    image, got_mask = np.asarray(out["image"]), np.asarray(out["mask"])
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(got_mask, (image[..., 0] >= 0.5).astype(np.float32))
    assert not np.array_equal(got_mask, mask / 255)                       # something moved
    part = device_augment.augment_batch({k: v[2:4] for k, v in batch.items()}, key, jnp.int32(12),
                                        degrees=30.0, flip=True)
    np.testing.assert_array_equal(np.asarray(part["image"]), image[2:4])   # row i <-> position 10 + i


def test_host_setting_adds_nothing_to_the_step():
    config = configs.get_config("tiny")
    assert device_augment.make_train_augment(config, 1) is None
    config.data.augment_on = "gpu"
    with pytest.raises(ValueError, match="augment_on"):
        device_augment.make_train_augment(config, 1)


def cache_config(**data):
    config = configs.get_config("tiny")
    config.data.update(dict(batch_size=4, labelled_batch_size=2, **data))
    return config


def test_uint8_cache_holds_the_host_decode_and_is_rebuilt_when_stale(tmp_path):
    config = cache_config()
    records = make_records(10, labelled=(1, 4, 7))
    key = uint8_cache.cache_key(config, "train", 10)
    cache = uint8_cache.build(records, config, uint8_cache.cache_directory(tmp_path, key), key)
    host = next(pipeline.eval_batches(cache_config(eval_batch_size=10), records))   # unaugmented float decode
    np.testing.assert_allclose(cache.images[:] / 255.0, host["image"][..., 0], atol=0.5 / 255 + 1e-6)
    assert list(cache.fields["lesion_labelled"]) == [i in (1, 4, 7) for i in range(10)]
    assert list(cache.fields["path"]) == list(host["path"])
    # another size or resize mode is another cache; a stale key is rebuilt
    other = uint8_cache.cache_key(cache_config(image_size=24), "train", 10)
    assert uint8_cache.cache_directory(tmp_path, other) != cache.directory
    assert not uint8_cache.is_current(cache.directory, uint8_cache.cache_key(cache_config(resize="pad"), "train", 10))
    opened = uint8_cache.open_or_build(config, "train", tmp_path, lambda: records, 10)
    assert uint8_cache.is_current(opened.directory, key)
    (cache.directory / "meta.json").unlink()                       # half-built: rebuilt on open
    rebuilt = uint8_cache.open_or_build(config, "train", tmp_path, lambda: records, 10)
    np.testing.assert_array_equal(rebuilt.images[:], cache.images[:])


def test_fracatlas_train_cache_key_follows_how_stage_3_chooses_its_labelled_images(tmp_path):
    """The cache stores lesion_labelled: N, the seed and a ranked list's contents all choose it, so each
    is in the key (a list once left out made a run silently train on another run's chosen images)."""
    config = configs.get_config("fracatlas")
    key = lambda: uint8_cache.cache_key(config, "train", 10)["lesion_labels"]
    seeded = key()
    config.stage3.labelled_seed = 1
    assert key() != seeded
    listing = tmp_path / "ranked.csv"
    listing.write_text("path,rank\na.jpg,1\nb.jpg,2\n")
    config.stage3.labelled_list = str(listing)
    first = key()
    assert first != uint8_cache.cache_key(configs.get_config("fracatlas"), "train", 10)["lesion_labels"]
    listing.write_text("path,rank\nb.jpg,1\na.jpg,2\n")           # same images, another order: another choice
    assert key() != first
    assert uint8_cache.cache_key(config, "test", 10)["lesion_labels"] == ""   # only train stores the choice


def test_uint8_streams_resume_split_processes_and_cycle_labelled(tmp_path):
    config = cache_config()
    records = make_records(12, labelled=(0, 5, 9))
    cache = uint8_cache.open_or_build(config, "train", tmp_path, lambda: records, 12)
    stream = uint8_cache.train_batches(config, cache, seed=3)
    full = [next(stream) for _ in range(7)]                        # 3 steps per epoch: crosses 2 epochs
    resumed = uint8_cache.train_batches(config, cache, seed=3, start_step=4)
    for a, b in zip(full[4:], [next(resumed) for _ in range(3)]):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert list(a["path"]) == list(b["path"])
    assert full[0]["image"].dtype == np.uint8 and full[0]["image"].shape == (4, 32, 32, 1)
    epoch = sorted(p for batch in full[:3] for p in batch["path"])
    assert epoch == sorted(cache.fields["path"])                   # an epoch sees each example once
    halves = [next(uint8_cache.train_batches(config, cache, seed=3, process_index=k, process_count=2))
              for k in range(2)]
    assert not set(halves[0]["path"]) & set(halves[1]["path"]) and len(halves[0]["path"]) == 2
    labelled = uint8_cache.labelled_batches(config, cache, seed=1)
    seen = [p for _ in range(3) for p in next(labelled)["path"]]
    assert set(seen) == {"img000.png", "img005.png", "img009.png"}
    again = uint8_cache.labelled_batches(config, cache, seed=1, start_step=2)
    assert list(next(again)["path"]) == seen[4:6]
    config.stage3.normal_images_per_batch = 2        # the normal images of `pcam_jax.data.normal_images`
    normal = [next(uint8_cache.labelled_batches(config, cache, seed=1, normal=True, start_step=k)) for k in range(3)]
    assert {p for b in normal for p in b["path"]} == {f"img{i:03d}.png" for i in range(0, 12, 2)}  # label = i % 2
    assert not np.concatenate([b["label"] for b in normal]).any() and len(normal[0]["path"]) == 2


def test_resume_is_exact_with_device_augmentation(tmp_path):
    from tests.test_loop import FakeData, quiet_reporter, tiny_config
    from pcam_jax.training import checkpointing, loop

    config = tiny_config(checkpoint_every_steps=2)
    config.data.augment_on = "device"
    whole, part = tmp_path / "whole", tmp_path / "part"
    loop.train_and_evaluate(config, whole, (1,), data=FakeData(config), reporter=quiet_reporter(whole))

    class Killed(Exception):
        pass

    def kill_at_5(stage, step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        loop.train_and_evaluate(config, part, (1,), data=FakeData(config), on_step=kill_at_5,
                                reporter=quiet_reporter(part))
    saved = checkpointing.StageCheckpoints(part, 1, read_only=True)
    assert saved.latest_step() == 4
    saved.close()
    loop.train_and_evaluate(config, part, (1,), data=FakeData(config), reporter=quiet_reporter(part))
    _, expected, _ = checkpointing.restore_for_eval(whole, 1, "latest")
    _, got, meta = checkpointing.restore_for_eval(part, 1, "latest")
    assert meta["step"] == 6
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # and the device augmentation changed training (the host setting gives other parameters)
    host = tiny_config(checkpoint_every_steps=2)
    loop.train_and_evaluate(host, tmp_path / "host", (1,), data=FakeData(host), reporter=quiet_reporter(tmp_path / "host"))
    _, plain, _ = checkpointing.restore_for_eval(tmp_path / "host", 1, "latest")
    assert not np.allclose(np.asarray(models_kernel(plain)), np.asarray(models_kernel(got)))


def models_kernel(variables):
    from pcam_jax import models
    return models.head_kernel(variables["params"])
