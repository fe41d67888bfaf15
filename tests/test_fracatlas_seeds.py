"""experiments/fracatlas_seeds.py: filling copied stages from their source runs, the pooled bootstrap."""

import numpy as np
import pytest

from tests.commands import load_experiment


def _module():
    return load_experiment("fracatlas_seeds")


def _run(seed, maps, auroc, per_image=None):
    return {"run": f"run{seed}", "seed": seed, "labelled_seed": seed, "auroc": dict(auroc),
            "maps": {k: {"pg": v, "pxap": v / 10} for k, v in maps.items()}, "per_image_pg": dict(per_image or {})}


def test_fill_from_takes_only_what_the_run_did_not_score():
    module = _module()
    own = _run(0, {"stage3/decoder": 0.5}, {"stage3": 0.8})
    source = _run(0, {"stage3/decoder": 0.3, "stage1/positive_cam": 0.1}, {"stage1": 0.81, "stage3": 0.7})
    filled = module.fill_from(dict(own), source)
    assert filled["maps"]["stage3/decoder"]["pg"] == 0.5 and filled["maps"]["stage1/positive_cam"]["pg"] == 0.1
    assert filled["auroc"] == {"stage1": 0.81, "stage3": 0.8}
    assert "stage1/positive_cam" not in own["maps"]          # the run itself is left as it was
    with pytest.raises(ValueError, match="not the same seed"):
        module.fill_from(dict(own), _run(1, {}, {}))


def test_pooled_bootstrap_of_a_constant_difference_is_that_constant():
    module = _module()
    # per image: A hits every image, B half of them -> difference 0.5 on every resample of 2 seeds x 4 images
    runs = [_run(s, {}, {}, {"a": np.ones(4), "b": np.array([1.0, 0.0, 1.0, 0.0])}) for s in (0, 1)]
    mean, low, high = module.bootstrap_pooled(runs, "a", "b", resamples=200)
    assert mean == 0.5 and low <= 0.5 <= high
    # seed 1: no difference -> mean 0.25; resampling seed 0's images (differences 0, 1, 0, 1) can
    # give it anything from 0 to 1, and both drawn seeds may be seed 0: the interval lies in [0, 1]
    runs[1]["per_image_pg"]["b"] = np.ones(4)
    mean, low, high = module.bootstrap_pooled(runs, "a", "b", resamples=2000)
    assert mean == 0.25 and 0.0 <= low < 0.25 < high <= 1.0
