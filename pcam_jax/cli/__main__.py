"""``python -m pcam_jax.cli COMMAND [flags]``: the same as the ``pcam-jax`` console script."""

from pcam_jax.cli import main

main()
