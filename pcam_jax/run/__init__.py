"""A trained run, used: `pcam_jax.load` (`analysis.Run`: predict, maps, faithfulness, sanity from a
checkpoint) and the batched file path of ``pcam-jax maps`` (`inference`)."""
