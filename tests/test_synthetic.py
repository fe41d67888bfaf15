"""Synthetic radiographs: determinism, exact lesion masks, confounder rates, split plan, builder."""

import hashlib
import math

import numpy as np
import pytest

from pcam_jax import configs
from pcam_jax.data import synthetic, synthetic_shapes, synthetic_splits

SIZE = 32


def _tiny_synthetic_config(**overrides):
    c = configs.get_config("tiny").synthetic
    c.update(dict(image_size=SIZE, num_train=16, num_model_selection=8, num_test=8,
                  num_labelled=3, num_heldout_labelled=8))
    c.update(overrides)
    return c


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation, written out."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def test_tube_chords_match_ray_marching():
    # Reference: walk along a ray at distance rho from the axis of a unit tube, in small steps,
    # and add up the length spent in the shell and in the core.
    step = 1e-4
    s = np.arange(-1.0, 1.0, step) + step / 2
    for rho in (0.0, 0.3, 0.59, 0.61, 0.9, 0.999, 1.2):
        for inner in (0.5, 0.6, 0.7):
            r = np.sqrt(s**2 + rho**2)
            cortex_ref = step * np.sum((r < 1.0) & (r >= inner))
            marrow_ref = step * np.sum(r < inner)
            cortex, marrow = synthetic_shapes.tube_chords(np.array(rho), inner)
            assert cortex == pytest.approx(cortex_ref, abs=3e-3), (rho, inner)
            assert marrow == pytest.approx(marrow_ref, abs=3e-3), (rho, inner)


def test_same_seed_and_index_give_identical_images():
    for index in (0, 5, 123):
        a = synthetic.generate(index, abnormal=True, seed=3, image_size=SIZE, marker_prob=0.5)
        b = synthetic.generate(index, abnormal=True, seed=3, image_size=SIZE, marker_prob=0.5)
        assert a["image"].dtype == np.uint8 and a["image"].shape == (SIZE, SIZE)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["lesion_mask"], b["lesion_mask"])
        assert a["lesion_kinds"] == b["lesion_kinds"] and a["has_marker"] == b["has_marker"]
    images = [synthetic.generate(i, abnormal=False, image_size=SIZE)["image"] for i in range(6)]
    other_seed = synthetic.generate(0, abnormal=False, seed=1, image_size=SIZE)["image"]
    for i in range(6):
        assert not np.array_equal(images[i], other_seed)
        for j in range(i):
            assert not np.array_equal(images[i], images[j]), (i, j)


def test_pinned_image_bytes():
    # Guards "the same image on any machine, any numpy": if you change the generator on
    # purpose, bump synthetic.GENERATOR_VERSION (it renames the TFDS configs) and update this.
    ex = synthetic.generate(7, abnormal=True, seed=0, image_size=SIZE, marker_prob=1.0, hardware_prob=1.0)
    digest = hashlib.sha256(ex["image"].tobytes() + ex["lesion_mask"].tobytes()).hexdigest()[:16]
    assert (synthetic.GENERATOR_VERSION, digest) == ("1.0.0", PINNED_DIGEST)


PINNED_DIGEST = "8587a0e593b59e0e"


def test_masks_exact_for_abnormal_empty_for_normal_and_inside_bone():
    for index in range(40):
        for abnormal in (False, True):
            ex = synthetic.generate(index, abnormal=abnormal, image_size=48, marker_prob=0.5,
                                    hardware_prob=0.5)
            mask = ex["lesion_mask"]
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert ex["label"] == int(abnormal)
            assert bool(ex["lesion_kinds"]) == abnormal
            assert ex["has_hardware"] == bool(ex["hardware_mask"].any())
            assert set(ex["lesion_kinds"]) <= set(synthetic.LESION_KINDS)
            if not abnormal:
                assert mask.sum() == 0
                continue
            assert mask.sum() > 0, index
            assert not np.any(mask.astype(bool) & ~ex["bone_mask"]), "lesion pixel outside bone"
            assert not np.any(mask.astype(bool) & (ex["marker_mask"] | ex["hardware_mask"]))


def test_lesions_change_only_bone_pixels_and_stand_out_of_the_noise():
    # One index's normal and abnormal versions share limb, exposure and grain: their difference
    # is the lesions alone, and it must lie on bone and be far above the grain (~5 grey levels).
    contrasts = []
    for index in range(30):
        kw = dict(image_size=SIZE, marker_prob=0.0, hardware_prob=0.0)
        abn = synthetic.generate(index, abnormal=True, **kw)
        nor = synthetic.generate(index, abnormal=False, **kw)
        changed = abn["image"] != nor["image"]
        assert not np.any(changed & ~_dilate(abn["bone_mask"] | nor["bone_mask"])), index
        diff = np.abs(abn["image"].astype(int) - nor["image"].astype(int))
        contrasts.append(diff[abn["lesion_mask"].astype(bool)].mean())
    assert min(contrasts) > 15, contrasts


@pytest.mark.parametrize("prob", [0.7, 0.2])
def test_marker_rate_matches_config_knob(prob):
    n = 300
    hits = 0
    for index in range(n):
        ex = synthetic.generate(index, abnormal=prob > 0.5, seed=11, image_size=SIZE, marker_prob=prob)
        hits += ex["has_marker"]
        assert ex["has_marker"] == bool(ex["marker_mask"].any())
        assert ex["marker_letter"] in (("L", "R") if ex["has_marker"] else ("",))
        if ex["has_marker"]:  # lead letters burn white
            assert ex["image"][ex["marker_mask"]].mean() > 220
    tolerance = 4 * math.sqrt(n * prob * (1 - prob))
    assert abs(hits - n * prob) < tolerance, (hits, n * prob)


def test_marker_knob_moves_nothing_but_the_marker():
    for index in range(10):
        kw = dict(abnormal=bool(index % 2), image_size=SIZE, hardware_prob=0.5)
        with_marker = synthetic.generate(index, marker_prob=1.0, **kw)
        without = synthetic.generate(index, marker_prob=0.0, **kw)
        changed = with_marker["image"] != without["image"]
        assert changed.any()
        assert not np.any(changed & ~_dilate(_dilate(with_marker["marker_mask"]))), index
        np.testing.assert_array_equal(with_marker["hardware_mask"], without["hardware_mask"])


def test_generate_for_config_uses_the_rate_of_the_label():
    c = _tiny_synthetic_config(marker_prob_abnormal=1.0, marker_prob_normal=0.0,
                               hardware_prob_abnormal=0.0, hardware_prob_normal=1.0)
    for index in range(10):
        abn = synthetic.generate_for_config(c, index, 1)
        nor = synthetic.generate_for_config(c, index, 0)
        assert abn["has_marker"] and not abn["has_hardware"] and abn["label"] == 1
        assert not nor["has_marker"] and nor["has_hardware"] and nor["label"] == 0


def test_split_plan_counts_disjointness_and_labelled_subset():
    settings = dict(num_train=40, num_model_selection=10, num_test=12, num_labelled=5,
                    num_heldout_labelled=6, abnormal_prevalence=0.3)
    c = _tiny_synthetic_config(**settings)
    plan = synthetic_splits.make_split_plan(c)
    assert list(plan) == list(synthetic_splits.SPLITS)
    sizes = dict(train=40, model_selection=10, test=12, heldout_labelled=6)
    all_indices = []
    for split, items in plan.items():
        assert len(items) == sizes[split]
        all_indices += [it.index for it in items]
        labels = [it.label for it in items]
        if split == "heldout_labelled":
            assert all(labels) and all(it.lesion_labelled for it in items)
        else:
            assert sum(labels) == round(0.3 * sizes[split])
        if split in ("model_selection", "test"):
            assert not any(it.lesion_labelled for it in items)
    assert len(set(all_indices)) == len(all_indices) == sum(sizes.values())
    labelled = [it for it in plan["train"] if it.lesion_labelled]
    assert len(labelled) == 5 and all(it.label == 1 for it in labelled)
    assert synthetic_splits.make_split_plan(c) == plan
    assert synthetic_splits.make_split_plan(_tiny_synthetic_config(**settings, seed=1)) != plan


@pytest.mark.parametrize("field, value, message", [
    ("num_labelled", 100, "num_labelled"),
    ("marker_prob_abnormal", 1.5, "marker_prob_abnormal"),
    ("num_test", -1, "num_test"),
    ("image_size", 8, "image_size"),
])
def test_split_plan_rejects_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        synthetic_splits.make_split_plan(_tiny_synthetic_config(**{field: value}))


def test_synthetic_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, pcam_jax.data.synthetic; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_builder_records_match_generator_byte_for_byte(tmp_path):
    from pcam_jax.data import synthetic_builder

    c = _tiny_synthetic_config()
    builder = synthetic_builder.prepare(c, tmp_path)
    assert builder.info.features["label"].names == ["normal", "abnormal"]
    plan = synthetic_splits.make_split_plan(c)
    for split, items in plan.items():
        by_index = {it.index: it for it in items}
        records = list(builder.as_dataset(split=split).as_numpy_iterator())
        assert len(records) == len(items)
        for rec in records:
            path = rec["path"].decode()
            assert path.startswith(f"synthetic/{split}/")
            item = by_index[int(path.rsplit("/", 1)[1])]
            ex = synthetic.generate_for_config(c, item.index, item.label)
            assert rec["image"].shape == rec["lesion_mask"].shape == (SIZE, SIZE, 1)
            np.testing.assert_array_equal(rec["image"][..., 0], ex["image"])
            np.testing.assert_array_equal(rec["lesion_mask"][..., 0], ex["lesion_mask"])
            assert rec["label"] == item.label and rec["lesion_labelled"] == item.lesion_labelled
            assert rec["has_mask"] and rec["body_part"] == b"SYNTHETIC"
            assert rec["study_id"].decode() == rec["patient_id"].decode() == path
    # Idempotent: a second prepare reuses the files; other settings get their own directory.
    again = synthetic_builder.prepare(c, tmp_path)
    assert again.data_dir == builder.data_dir
    other = synthetic_builder.builder(_tiny_synthetic_config(seed=5), tmp_path)
    assert other.data_dir != builder.data_dir and not other.is_prepared()


def test_config_name_changes_with_every_setting():
    from pcam_jax.data import synthetic_builder

    c = _tiny_synthetic_config()
    base = synthetic_builder.config_name(c)
    assert synthetic_builder.config_name(_tiny_synthetic_config()) == base
    for field in synthetic_builder.SETTINGS_FIELDS:
        value = c[field]
        if isinstance(value, str):
            changed = next(level for level in synthetic.LESION_LEVELS if level != value)
        else:
            changed = value + 1 if isinstance(value, int) else value / 2
        assert synthetic_builder.config_name(_tiny_synthetic_config(**{field: changed})) != base, field


def test_lesion_levels_grow_lesions_in_place_and_leave_normal_limbs_alone():
    clear_size, clear_contrast = synthetic.lesion_level_multipliers("clear")
    assert synthetic.lesion_level_multipliers("subtle") == (1.0, 1.0)
    assert clear_size > 1.0 and clear_contrast >= 1.0
    kw = dict(image_size=SIZE, marker_prob=0.0, hardware_prob=0.0)
    grown = dict(lesion_size=clear_size, lesion_contrast=clear_contrast)
    areas, contrasts = [], []
    for index in range(12):
        subtle = synthetic.generate(index, abnormal=True, **kw)
        clear = synthetic.generate(index, abnormal=True, **kw, **grown)
        assert subtle["lesion_kinds"] == clear["lesion_kinds"]
        # Same spots: every subtle lesion pixel lies on (or next to) a clear lesion pixel.
        assert not np.any(subtle["lesion_mask"].astype(bool) & ~_dilate(clear["lesion_mask"].astype(bool)))
        areas.append((subtle["lesion_mask"].sum(), clear["lesion_mask"].sum()))
        normal = synthetic.generate(index, abnormal=False, **kw)
        inside = subtle["lesion_mask"].astype(bool)
        contrasts.append([np.abs(ex["image"].astype(int) - normal["image"])[inside].mean() for ex in (subtle, clear)])
        assert np.array_equal(normal["image"], synthetic.generate(index, abnormal=False, **kw, **grown)["image"])
    subtle_area, clear_area = np.sum(areas, axis=0)
    assert clear_area > 1.2 * subtle_area  # less than clear_size**2 at 32 px: pixel floors
    subtle_contrast, clear_contrast = np.median(contrasts, axis=0)
    assert clear_contrast > 1.2 * subtle_contrast, contrasts
    with pytest.raises(ValueError, match="lesion_level"):
        synthetic.lesion_level_multipliers("obvious")


def test_config_name_follows_the_level_multipliers_not_only_its_name(monkeypatch):
    from pcam_jax.data import synthetic_builder

    c = _tiny_synthetic_config(lesion_level="clear")
    before = synthetic_builder.config_name(c)
    monkeypatch.setitem(synthetic.LESION_LEVELS, "clear", (9.0, 9.0))
    assert synthetic_builder.config_name(c) != before
