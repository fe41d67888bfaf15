"""How visible are the synthetic lesions? Size and contrast at a level, before and after augmentation.

Renders the same held-out limbs with and without lesions (marker and hardware off: the two
renders then differ only by the lesions, since anatomy, exposure and grain come from their own
random streams) and prints, as medians over limbs:
- lesion area in pixels and as a share of the image;
- mean |abnormal - normal| inside the lesion mask, in 8-bit grey levels, as stored and after
  the training pipeline's flip + rotation (bilinear resampling, up to config.data.rotate_degrees);
- the lesion against the bone around it: |mean in mask - mean of a 3-pixel bone ring around it|,
  with the lesion and on the same spot of the normal limb (what anatomy alone gives);
- the grain: pixel std in the 10x10 image corner with the least tissue;
- the side marker's area and contrast (the shortcut the lesions compete with);
- the lesions' share of the image's total variation, sum|abnormal - normal| / sum|normal - mean|.

    python experiments/lesion_visibility.py --level subtle --image_size 128 --limbs 100
"""

from __future__ import annotations

import math

from absl import app, flags
import numpy as np
import scipy.ndimage

from pcam_jax.data import synthetic

_LEVEL = flags.DEFINE_string("level", "subtle", "synthetic.LESION_LEVELS name.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Image side in pixels.")
_LIMBS = flags.DEFINE_integer("limbs", 100, "Limbs to render.")
_DEGREES = flags.DEFINE_float("rotate_degrees", 30.0, "Training rotation range.")
_FIRST = 1_000_000  # past every split (as pcam_jax.evaluation.shortcuts)


def main(argv):
    del argv
    size, contrast = synthetic.lesion_level_multipliers(_LEVEL.value)
    kw = dict(image_size=_SIZE.value, marker_prob=0.0, hardware_prob=0.0, lesion_size=size,
              lesion_contrast=contrast)
    pairs = [(synthetic.generate(i, abnormal=True, **kw), synthetic.generate(i, abnormal=False, **kw))
             for i in range(_FIRST, _FIRST + _LIMBS.value)]
    abnormal = np.stack([a["image"] for a, _ in pairs]).astype(np.float32) / 255
    normal = np.stack([n["image"] for _, n in pairs]).astype(np.float32) / 255
    masks = np.stack([a["lesion_mask"] for a, _ in pairs]).astype(np.float32)

    def contrast_in_mask(a, n, m):
        m = m > 0.5
        return np.median([np.abs(a[k] - n[k])[m[k]].mean() * 255 for k in range(len(a)) if m[k].any()])

    area = (masks > 0).sum((1, 2))
    print(f"level {_LEVEL.value} (size x{size}, contrast x{contrast}), {_SIZE.value} px, {_LIMBS.value} limbs")
    print(f"lesion area: median {np.median(area):.0f} px (p10 {np.percentile(area, 10):.0f}, "
          f"p90 {np.percentile(area, 90):.0f}); {area.mean() / _SIZE.value**2:.4f} of the image")
    print(f"mean |abnormal - normal| in the mask, stored: {contrast_in_mask(abnormal, normal, masks):.1f} grey levels")
    local_abnormal, local_normal = [], []
    for (a, n), m in zip(pairs, masks > 0):
        if not m.any():
            continue
        ring = scipy.ndimage.binary_dilation(m, iterations=3) & ~m & n["bone_mask"]
        if ring.any():
            local_abnormal.append(abs(a["image"][m].mean() - a["image"][ring].mean()))
            local_normal.append(abs(n["image"][m].mean() - n["image"][ring].mean()))
    print(f"|mean in mask - mean of the bone ring 3 px around it|: {np.median(local_abnormal):.1f} grey levels "
          f"with the lesion, {np.median(local_normal):.1f} on the same spot of the normal limb")
    corners = [normal[:, :10, :10], normal[:, :10, -10:], normal[:, -10:, :10], normal[:, -10:, -10:]]
    grain = np.median(np.min([c.std(axis=(1, 2)) for c in corners], axis=0)) * 255
    print(f"grain (pixel std in the emptiest corner): {grain:.1f} grey levels")
    share = np.median(np.abs(abnormal - normal).sum((1, 2)) / np.abs(normal - normal.mean((1, 2), keepdims=True)).sum((1, 2)))
    print(f"lesions' share of the image's variation: {share:.4f}")

    marked = [synthetic.generate(i, abnormal=False, **dict(kw, marker_prob=1.0))
              for i in range(_FIRST, _FIRST + _LIMBS.value)]
    marker_area = [m["marker_mask"].sum() for m in marked]
    marker_contrast = [np.abs(m["image"].astype(float) - n["image"])[m["marker_mask"]].mean()
                       for m, (_, n) in zip(marked, pairs)]
    print(f"for comparison, the side marker: {np.median(marker_area):.0f} px, mean |marked - unmarked| "
          f"{np.median(marker_contrast):.1f} grey levels")

    from pcam_jax.data import pipeline  # TensorFlow: only for the augmentation
    import tensorflow as tf

    rng = np.random.default_rng(0)
    angles = tf.constant((rng.uniform(-1, 1, len(pairs)) * math.radians(_DEGREES.value)).astype(np.float32))
    flips = tf.constant(rng.random(len(pairs)) < 0.5)
    turn = lambda x: pipeline.flip_rotate(tf.constant(x[..., None]), angles, flips).numpy()[..., 0]
    print(f"mean |abnormal - normal| in the mask, after flip + rotation: "
          f"{contrast_in_mask(turn(abnormal), turn(normal), (turn(masks) >= 0.5).astype(np.float32)):.1f} grey levels")


if __name__ == "__main__":
    app.run(main)
