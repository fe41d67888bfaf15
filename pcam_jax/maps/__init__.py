"""Saliency maps: CAM, positive CAM, Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM, HiResCAM,
XGradCAM, AblationCAM, EigenCAM, Integrated Gradients, SmoothGrad and the stage-3 decoder, one
registry entry each, in one batched, jitted harness.

A package since it outgrew one module; every public name is re-exported here, so
``pcam_jax.maps.X`` is the way to reach them:

- `pcam_jax.maps.cams`: helpers (`upsample`, `normalize`, `postprocess`, `class_weights`),
  CAM, positive CAM, the stage-2 attention map, EigenCAM;
- `pcam_jax.maps.gradient_cams`: Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, XGradCAM (one
  forward and one VJP);
- `pcam_jax.maps.perturbation_cams`: Score-CAM and AblationCAM (a forward or head per channel);
- `pcam_jax.maps.pixel_attribution`: Integrated Gradients and SmoothGrad (per pixel, not CAMs);
- `pcam_jax.maps.registry`: every method as one entry (`REGISTRY`, `METHODS`, `get`), the only
  list of them;
- `pcam_jax.maps.harness`: `all_maps`, `make_all_maps_fn`, `pad_batch`;
- `pcam_jax.maps.overlays`: the heat-map overlay of a map on its image.
"""

# Star imports on purpose: every public name of the modules, also one added to cams.py later,
# is reachable as pcam_jax.maps.X (as when maps was one module).
from pcam_jax.maps.cams import *  # noqa: F401,F403
from pcam_jax.maps.gradient_cams import *  # noqa: F401,F403
from pcam_jax.maps.perturbation_cams import *  # noqa: F401,F403
from pcam_jax.maps.registry import (CAM_METHODS, CLASSIFIER_METHODS, DECODER, FIGURE2_METHODS,  # noqa: F401,E402
                                    METHODS, REGISTRY, MapMethod)
from pcam_jax.maps.harness import all_maps, make_all_maps_fn, maps_and_logits, pad_batch  # noqa: F401,E402
