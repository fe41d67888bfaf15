"""Class activation maps: CAM, positive CAM, Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM,
HiResCAM, XGradCAM, AblationCAM and EigenCAM, in one batched, jitted harness.

A package since it outgrew one module; every public name is re-exported here, so
``pcam_jax.maps.X`` is the way to reach them:

- `pcam_jax.maps.cams`: helpers (`upsample`, `normalize`, `postprocess`, `class_weights`),
  CAM and positive CAM, the gradient methods, Score-CAM;
- `pcam_jax.maps.more_cams`: HiResCAM, XGradCAM, AblationCAM, EigenCAM;
- `pcam_jax.maps.harness`: `METHODS`, `all_maps`, `make_all_maps_fn`, `pad_batch`.

Pixel attributions (Integrated Gradients, SmoothGrad) are per pixel, not CAMs:
`pcam_jax.maps.pixel_attribution`.
"""

# Star imports on purpose: every public name of the modules, also one added to cams.py later,
# is reachable as pcam_jax.maps.X (as when maps was one module).
from pcam_jax.maps.cams import *  # noqa: F401,F403
from pcam_jax.maps.more_cams import *  # noqa: F401,F403
from pcam_jax.maps.harness import METHODS, all_maps, make_all_maps_fn, maps_and_logits, pad_batch  # noqa: F401,E402
