"""Normal images in stage 3's labelled batch (`pcam_jax.data.normal_images`,
``config.stage3.normal_images_per_batch``): only label-0 images, masks empty and counted,
their own resumable stream, the labelled rows unchanged."""

import numpy as np
import pytest

from pcam_jax.data import normal_images

tf = pytest.importorskip("tensorflow")
from pcam_jax.data import pipeline  # noqa: E402
from tests.test_pipeline import assert_batches_equal, make_records, take, tiny_config  # noqa: E402


def config_with(k, **data):
    config = tiny_config(**data)
    config.stage3.normal_images_per_batch = k
    return config


def test_normal_stream_holds_only_normal_images_and_resumes():
    config = config_with(3)
    records = make_records(20, labelled=(1, 3))       # label = index % 2: the even ones are normal
    batches = take(pipeline.labelled_batches(config, records, seed=4, normal=True), 8)
    assert all(len(b["label"]) == 3 for b in batches)
    paths = np.concatenate([b["path"] for b in batches])
    assert set(paths) <= {f"img{i:03d}.png" for i in range(0, 20, 2)} and len(set(paths)) == 10
    assert not np.concatenate([b["label"] for b in batches]).any()
    resumed = take(pipeline.labelled_batches(config, records, seed=4, start_step=5, normal=True), 3)
    for a, b in zip(batches[5:], resumed):
        assert_batches_equal(a, b)


def test_append_empties_the_normal_masks_and_keeps_the_labelled_rows():
    config = config_with(2, labelled_batch_size=4)
    records = make_records(20, labelled=(1, 3, 5, 7))
    labelled = next(pipeline.labelled_batches(config, records, seed=0))
    normal = next(pipeline.labelled_batches(config, records, seed=0, normal=True))
    assert normal["mask"].any()                         # these records store a mask: it must go
    mixed = normal_images.append(labelled, normal)
    assert mixed.keys() == labelled.keys()
    for key in labelled:
        np.testing.assert_array_equal(mixed[key][:4], labelled[key], err_msg=key)
        if key not in ("mask", "has_mask"):
            np.testing.assert_array_equal(mixed[key][4:], normal[key], err_msg=key)
    assert mixed["label"].tolist() == [1, 1, 1, 1, 0, 0]
    assert not mixed["mask"][4:].any() and mixed["has_mask"][4:].all()   # empty, and counted by L3
    with pytest.raises(ValueError, match="abnormal image"):
        normal_images.append(labelled, labelled)


def test_the_option_is_checked():
    assert normal_images.per_process(config_with(0)) == 0
    assert normal_images.per_process(config_with(4), 2) == 2
    for bad, processes in ((-1, 1), (3, 2)):
        with pytest.raises(ValueError, match="normal_images_per_batch"):
            normal_images.per_process(config_with(bad), processes)
