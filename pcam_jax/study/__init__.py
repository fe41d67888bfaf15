"""The seeded study: the grid of runs (`runner`) and its tables and plot (`tables`).

The public names of `pcam_jax.study.runner` are re-exported: ``pcam_jax.study.grid``.
"""

from pcam_jax.study.runner import *  # noqa: F401,F403
