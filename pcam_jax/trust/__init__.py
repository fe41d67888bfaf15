"""Can a map be trusted? Faithfulness (deletion / insertion, ROAD with noisy linear imputation,
confidence drop) and sanity (cascading parameter randomisation, random logit) of saliency maps.

- `pcam_jax.trust.faithfulness`, `pcam_jax.trust.imputation`, `pcam_jax.trust.sanity`: the pure
  metrics, arrays in and arrays out;
- `pcam_jax.trust.programs`: those metrics bound to one trained network, jitted (what
  `pcam_jax.run.analysis.Run.faithfulness` / `.sanity` and `pcam-jax evaluate` call).
"""
