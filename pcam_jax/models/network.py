"""The paper's network: a ResNet encoder shared by a classifier head and an FCN decoder.

One parameter pytree holds all three parts::

    params = {"encoder": ..., "head": ..., "decoder": ...}
    batch_stats = {"encoder": ...}          # only the encoder has BatchNorm

The classifier is ``head(encoder(x))`` and the FCN is ``decoder(encoder(x))``: both read
the same ``params["encoder"]``, never a copy.

Counting the layers. The default encoder follows ``experiments/benchmarks/torch_twin`` (the PyTorch twin we
benchmark against): a 7x7/2 stem convolution and a 3x3/2 max-pool, then ten basic blocks
(2, 3, 3, 2 per stage; widths 16, 32, 64, 128; strides 1, 2, 2, 1), each with two 3x3
convolutions. The weighted layers on the main path are 1 stem + 20 block convolutions +
1 dense = 22; with the global-average-pool layer that gives the paper's 23. The three 1x1
projection shortcuts are not counted, as in ResNet-18/34 naming. Total stride is 16, so a
320x320 image gives a 20x20x128 feature map; encoder + head have 793,330 parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax import geometry
from pcam_jax.models.conv import conv_function
from pcam_jax.models.pooling import pool_function

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Architecture hyper-parameters; built from ``config.model`` by `spec_from_config`."""

    stem_width: int = 16
    widths: Sequence[int] = (16, 32, 64, 128)
    strides: Sequence[int] = (1, 2, 2, 1)
    blocks: Sequence[int] = (2, 3, 3, 2)
    num_classes: int = 2
    decoder_widths: Sequence[int] = (64, 32, 16)
    # Compute dtype. "bfloat16" is mixed precision: convolutions, BatchNorm outputs and ReLUs
    # in bfloat16; parameters, BatchNorm statistics (reduced in float32 by flax), the head, the
    # decoder's output layer and every loss in float32 (docs/PERFORMANCE.md: measured slower on
    # 2-core AVX-512 CPUs, so off by default; for accelerators).
    dtype: str = "float32"
    # Images enter in [0, 1]; the encoder standardises them first, so masking I * T(A)
    # in stage 2 works in pixel space, where 0 is the black background of a radiograph.
    input_mean: float = 0.5
    input_std: float = 0.25
    # How convolutions and the max-pool are written for XLA (pcam_jax.models.conv, pcam_jax.models.pooling;
    # measured in docs/PERFORMANCE.md). Parameters and results are the same for every choice.
    conv_impl: str = "flipped_dx+s2d"
    pool_impl: str = "strided"


COMPUTE_DTYPES = ("float32", "bfloat16")


def spec_from_config(model_config: Any) -> NetworkSpec:
    """`NetworkSpec` from a ``config.model`` ConfigDict (or any mapping with those keys)."""
    get = model_config.get if hasattr(model_config, "get") else lambda k, d: getattr(model_config, k, d)
    d = NetworkSpec()
    if str(get("dtype", d.dtype)) not in COMPUTE_DTYPES:
        raise ValueError(f"config.model.dtype must be one of {COMPUTE_DTYPES} (bfloat16: mixed precision), "
                         f"got {get('dtype', d.dtype)!r}")
    return NetworkSpec(
        stem_width=int(get("stem_width", d.stem_width)),
        widths=tuple(int(w) for w in get("widths", d.widths)),
        strides=tuple(int(s) for s in get("strides", d.strides)),
        blocks=tuple(int(b) for b in get("blocks", d.blocks)),
        num_classes=int(get("num_classes", d.num_classes)),
        decoder_widths=tuple(int(w) for w in get("decoder_widths", d.decoder_widths)),
        dtype=str(get("dtype", d.dtype)),
        input_mean=float(get("input_mean", d.input_mean)),
        input_std=float(get("input_std", d.input_std)),
        conv_impl=str(get("conv_impl", d.conv_impl)),
        pool_impl=str(get("pool_impl", d.pool_impl)),
    )


def _batch_norm(train: bool, dtype, name=None):
    # momentum 0.9 in Flax == 0.1 in PyTorch; eps as PyTorch's default.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    width: int
    stride: int
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv_fn = conv_function(self.conv_impl)
        conv = lambda w, k, s, name: nn.Conv(w, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                             use_bias=False, dtype=self.dtype, name=name,
                                             conv_general_dilated=conv_fn)
        y = conv(self.width, 3, self.stride, "conv1")(x)
        y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
        y = conv(self.width, 3, 1, "conv2")(y)
        y = _batch_norm(train, self.dtype, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = conv(self.width, 1, self.stride, "proj")(x)
            x = _batch_norm(train, self.dtype, "proj_bn")(x)
        return nn.relu(y + x)


class Encoder(nn.Module):
    """ResNet of basic blocks, one input channel. Returns the final map and the stage outputs."""

    spec: NetworkSpec

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, list[Array]]:
        s, dtype = self.spec, jnp.dtype(self.spec.dtype)
        x = ((x - s.input_mean) / s.input_std).astype(dtype)
        x = nn.Conv(s.stem_width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                    dtype=dtype, name="stem_conv", conv_general_dilated=conv_function(s.conv_impl))(x)
        x = nn.relu(_batch_norm(train, dtype, "stem_bn")(x))
        x = pool_function(s.pool_impl)(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        stage_outputs = []
        for i, (width, stride, n) in enumerate(zip(s.widths, s.strides, s.blocks)):
            for j in range(n):
                x = BasicBlock(width, stride if j == 0 else 1, dtype, s.conv_impl, name=f"stage{i + 1}_block{j + 1}")(x, train)
            stage_outputs.append(x)
        return x, stage_outputs


class Head(nn.Module):
    """Global average pooling + dense layer: ``logits = mean_hw(h) @ W + b``."""

    num_classes: int

    @nn.compact
    def __call__(self, features: Array) -> Array:
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="dense")(pooled)


class Decoder(nn.Module):
    """FCN decoder: upsamples the encoder's map with skips from earlier stages to a [0, 1] lesion map.

    Each level: 2x bilinear upsampling (when the skip is larger), concatenation with the
    matching encoder stage, two 3x3 conv + ReLU. A final 1x1 conv and a sigmoid give one
    channel, resized bilinearly to the input size.
    """

    spec: NetworkSpec

    @nn.compact
    def __call__(self, features: Array, stage_outputs: Sequence[Array], out_hw: tuple[int, int]) -> Array:
        dtype = jnp.dtype(self.spec.dtype)
        x = features
        # Skips from the deepest to the shallowest stage whose resolution differs from x's.
        skips = [s for s in reversed(stage_outputs[:-1])]
        for i, width in enumerate(self.spec.decoder_widths):
            if i < len(skips):
                skip = skips[i]
                if skip.shape[1:3] != x.shape[1:3]:
                    x = geometry.upsample_decoder(x, skip.shape[1], skip.shape[2])
                x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            for k in range(2):
                x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=dtype, name=f"level{i + 1}_conv{k + 1}")(x))
        logits = nn.Conv(1, (1, 1), dtype=jnp.float32, name="out")(x)
        logits = geometry.upsample_decoder(logits.astype(jnp.float32), *out_hw)
        return jax.nn.sigmoid(logits[..., 0])


class PCAMNet(nn.Module):
    """Encoder + classifier head + FCN decoder sharing the encoder.

    ``__call__`` returns ``(logits, features)`` in one pass; ``feature_perturbation`` (same
    shape as the features) is added to the features before the head, so the gradient of a
    logit with respect to it is the gradient with respect to the feature map (Grad-CAM).
    ``segment`` returns the decoder's lesion map ``(B, H, W)`` in [0, 1].
    """

    spec: NetworkSpec

    def setup(self):
        self.encoder = Encoder(self.spec)
        self.head = Head(self.spec.num_classes)
        self.decoder = Decoder(self.spec)

    def __call__(self, images: Array, train: bool = False, feature_perturbation: Array | None = None):
        features, _ = self.encoder(images, train)
        features = features.astype(jnp.float32)
        if feature_perturbation is not None:
            features = features + feature_perturbation
        return self.head(features), features

    def segment(self, images: Array, train: bool = False) -> Array:
        features, stages = self.encoder(images, train)
        return self.decoder(features, stages, images.shape[1:3])

    def classify_and_segment(self, images: Array, train: bool = False):
        """(logits, features, lesion_map) sharing one encoder pass (used by stage 3 and init)."""
        features, stages = self.encoder(images, train)
        features32 = features.astype(jnp.float32)
        return self.head(features32), features32, self.decoder(features, stages, images.shape[1:3])


ABNORMAL = 1  # class index of "abnormal" (pcam_jax.data.CLASS_NAMES)


def head_kernel(params: dict) -> Array:
    """The head's dense kernel ``W`` (K, C), the weights of every CAM: ``params["head"]["dense"]["kernel"]``."""
    return params["head"]["dense"]["kernel"]


def abnormal_probability(model: "PCAMNet", variables: dict, images: Array) -> tuple[Array, Array]:
    """``(p, logits)``: P(abnormal) (B,) and float32 logits (B, C) of the eval-mode forward.

    The one evaluation forward: the loop's model selection, `pcam-jax evaluate` and the
    analysis API all score images through it.
    """
    logits, _ = model.apply(variables, images, train=False)
    logits = logits.astype(jnp.float32)
    return probability_of_abnormal(logits), logits


def probability_of_abnormal(logits: Array) -> Array:
    """P(abnormal) (B,) from logits (B, C), in float32: the one definition of the score."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, ABNORMAL]


def create_model(model_config: Any) -> PCAMNet:
    spec = model_config if isinstance(model_config, NetworkSpec) else spec_from_config(model_config)
    return PCAMNet(spec)


def init_variables(model: PCAMNet, rng: Array, image_size: int, batch_size: int = 1) -> dict:
    """``{"params": {"encoder", "head", "decoder"}, "batch_stats": {"encoder"}}`` for square images."""
    x = jnp.zeros((batch_size, image_size, image_size, 1), jnp.float32)
    variables = model.init(rng, x, train=False, method=PCAMNet.classify_and_segment)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def feature_shape(model: PCAMNet, image_size: int) -> tuple[int, ...]:
    """Shape (1, h, w, K) of the feature map for one square image, without computing anything."""
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, image_size, image_size, 1))), variables)
    return tuple(out[1].shape)


def classifier_apply_fn(model: PCAMNet, variables: dict) -> Callable:
    """``apply_fn(images, feature_perturbation=None) -> (logits, features)`` in eval mode.

    This is the signature the gradient-based maps in `pcam_jax.maps` take.
    """

    def apply_fn(images, feature_perturbation=None):
        return model.apply(variables, images, train=False, feature_perturbation=feature_perturbation)

    return apply_fn


def count_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
