"""The map methods: one entry per method, the only list of them.

Every map the project knows is a `MapMethod` here: its function, whether it needs the gradient
of the target logit (one VJP shared by all such methods), whether it needs a trained decoder,
its display name, and the selections other parts read (Figure 2, the seeded study). The
harness (`pcam_jax.maps.harness`), `pcam_jax.load(...).maps`, ``pcam-jax maps``, ``pcam-jax
evaluate``, the figures and the study all ask this table; adding a method is one small
function and one entry (as a pytorch-grad-cam method is one weighting class).

A method's function takes the batch's `Inputs` (computed once per batch by the harness) and
returns raw maps (B, h, w): at feature resolution for the CAMs, at image resolution for the
pixel attributions and the decoder. `pcam_jax.maps.postprocess` brings any of them to [0, 1]
at the image size.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Sequence

import jax

from pcam_jax.maps import cams, gradient_cams, perturbation_cams, pixel_attribution

Array = jax.Array
DECODER = "decoder"                # stage 3's FCN lesion map, made by the model itself
PIXEL_STEPS = 32                   # Integrated Gradients' path steps, SmoothGrad's noise samples
SMOOTHGRAD_SEED = 0                # SmoothGrad's noise: fixed, so a map is a function of the image


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a method reads, made once per batch by `pcam_jax.maps.harness.maps_and_logits`.

    ``grads`` is None unless a requested method `uses_gradients`; ``segment_fn`` (images ->
    lesion map (B, H, W)) is None unless the model has a decoder to call.
    """

    apply_fn: Callable             # (images, feature_perturbation=None) -> (logits, features)
    weights: Array                 # (K, C) the head's dense kernel
    images: Array                  # (B, H, W, C)
    logits: Array                  # (B, C)
    features: Array                # (B, h, w, K)
    targets: Array                 # (B,) int
    grads: Array | None = None     # (B, h, w, K) d target logit / d features
    chunk: int = 32                # channels (Score-CAM, AblationCAM) or steps (IG, SmoothGrad) per batched call
    head_fn: Callable | None = None    # features -> logits (AblationCAM ablates the head only)
    segment_fn: Callable | None = None

    def target_logit(self) -> Callable[[Array], Array]:
        """``score_fn(images) -> (B,)``, the target class's logit (the pixel attributions' score)."""
        return pixel_attribution.target_logit(lambda x: self.apply_fn(x)[0], self.targets)


@dataclasses.dataclass(frozen=True)
class MapMethod:
    """One map method.

    Attributes:
      name: the name every API takes (``run.maps(images, method=name)``, ``--method name``).
      title: the display name in tables and figures.
      fn: `Inputs` -> raw maps (B, h, w).
      uses_gradients: reads ``Inputs.grads`` (the harness then runs the one shared VJP).
      needs_decoder: the decoder's map; meaningful only for a stage that trains the decoder.
      family: ``"cam"`` (a weighting of the feature maps), ``"pixel"`` (a per-pixel
        attribution, at image resolution), ``"decoder"``.
      in_figure2: a column of Figure 2 and of the shortcut arg-max table (cheap: one forward
        and at most one VJP).
      in_paper: one of the paper's own maps (CAM, positive CAM, the decoder): what the seeded
        study scores.
    """

    name: str
    title: str
    fn: Callable[[Inputs], Array]
    uses_gradients: bool = False
    needs_decoder: bool = False
    family: str = "cam"
    in_figure2: bool = False
    in_paper: bool = False


def _weighted(channel_weights: Callable[[Inputs], Array]) -> Callable[[Inputs], Array]:
    """A CAM that is ``relu(sum_k w_k A_k)`` for per-image channel weights (B, K)."""
    return lambda i: jax.nn.relu(cams.weighted_sum(i.features, channel_weights(i)))


def _decoder(i: Inputs) -> Array:
    if i.segment_fn is None:
        raise ValueError("the decoder map needs the model's decoder: make the maps function from the "
                         "model (`pcam_jax.maps.make_all_maps_fn`) or pass segment_fn")
    return i.segment_fn(i.images)


_ENTRIES = (
    MapMethod("cam", "CAM", lambda i: cams.cam(i.features, i.weights, i.targets), in_figure2=True, in_paper=True),
    MapMethod("positive_cam", "positive CAM", lambda i: cams.positive_cam(i.features, i.weights, i.targets),
              in_figure2=True, in_paper=True),
    MapMethod("grad_cam", "Grad-CAM", lambda i: gradient_cams.grad_cam_from_gradients(i.features, i.grads),
              uses_gradients=True, in_figure2=True),
    MapMethod("grad_cam_pp", "Grad-CAM++", lambda i: gradient_cams.grad_cam_pp_from_gradients(i.features, i.grads),
              uses_gradients=True),
    MapMethod("layer_cam", "LayerCAM", lambda i: gradient_cams.layer_cam_from_gradients(i.features, i.grads),
              uses_gradients=True),
    MapMethod("score_cam", "Score-CAM", _weighted(
        lambda i: perturbation_cams.score_cam_weights(i.apply_fn, i.images, i.features, i.targets, i.chunk))),
    MapMethod("hires_cam", "HiResCAM", lambda i: gradient_cams.hires_cam_from_gradients(i.features, i.grads),
              uses_gradients=True),
    MapMethod("xgrad_cam", "XGradCAM", lambda i: gradient_cams.xgrad_cam_from_gradients(i.features, i.grads),
              uses_gradients=True),
    MapMethod("ablation_cam", "AblationCAM", _weighted(lambda i: perturbation_cams.ablation_cam_weights(
        i.apply_fn, i.images, i.features, i.logits, i.targets, i.chunk, i.head_fn))),
    MapMethod("eigen_cam", "EigenCAM", lambda i: cams.eigen_cam_from_features(i.features)),
    MapMethod("integrated_gradients", "Integrated Gradients", lambda i: pixel_attribution.saliency_map(
        pixel_attribution.integrated_gradients(i.target_logit(), i.images, 0.0, PIXEL_STEPS, i.chunk)),
        family="pixel"),
    MapMethod("smoothgrad", "SmoothGrad", lambda i: pixel_attribution.saliency_map(pixel_attribution.smooth_grad(
        i.target_logit(), i.images, jax.random.key(SMOOTHGRAD_SEED), PIXEL_STEPS, chunk=i.chunk)),
        family="pixel"),
    MapMethod(DECODER, "decoder", _decoder, needs_decoder=True, family="decoder", in_figure2=True, in_paper=True),
)
REGISTRY: dict[str, MapMethod] = {m.name: m for m in _ENTRIES}
METHODS: tuple[str, ...] = tuple(REGISTRY)   # every method, in display order
CLASSIFIER_METHODS = tuple(n for n, m in REGISTRY.items() if not m.needs_decoder)   # maps of the classifier
CAM_METHODS = tuple(n for n, m in REGISTRY.items() if m.family == "cam")
FIGURE2_METHODS = tuple(n for n, m in REGISTRY.items() if m.in_figure2)     # cheap: one forward, at most one VJP


def get(name: str) -> MapMethod:
    """The entry named ``name``; an unknown name is answered with the closest one and the list."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown map method {name!r}{hint}; choose from {', '.join(METHODS)}")
    return REGISTRY[name]


def check(methods: str | Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a non-empty tuple of known names (a single name is one method)."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    if not methods:
        raise ValueError(f"no map method given; choose from {', '.join(METHODS)}")
    for name in methods:
        get(name)
    return methods


def title(name: str) -> str:
    return get(name).title
