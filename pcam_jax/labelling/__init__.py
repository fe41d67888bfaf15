"""Choosing which images a clinician labels, and labelling them in a browser (issue 23).

- `pcam_jax.labelling.acquisition`: the acquisition functions (pure, jitted with the model's maps);
- `pcam_jax.labelling.selection`: `pcam-jax select`, the candidates of a run's dataset ranked;
- `pcam_jax.labelling.store`: the COCO labels file, atomic saves, one writer (a lock file);
- `pcam_jax.labelling.images`: the listed images as the model reads them, as PNG;
- `pcam_jax.labelling.app` and ``static/``: `pcam-jax label`, the local labelling page (Flask).
"""
