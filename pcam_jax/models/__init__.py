"""The network: the paper's 23-layer ResNet encoder, the dense head and the FCN decoder (`network`),
and how its convolutions and max-pool are written for XLA (`conv`, `pooling`).

The public names of `pcam_jax.models.network` are re-exported: ``pcam_jax.models.PCAMNet``.
"""

from pcam_jax.models.network import *  # noqa: F401,F403
