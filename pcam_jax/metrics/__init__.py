"""Metrics as pure numpy functions of predictions and labels: one package for training and evaluation.

- `classification`: accuracy, AUROC, sensitivity, specificity, Cohen's kappa; per image, per
  study (MURA: a study's probability is the mean of its images'), per body part.
- `localisation`: pointing game, energy pointing game, IoU/Dice at a threshold, PxAP and
  MaxBoxAccV2 of maps against lesion masks.

The training loop (model selection) and `pcam-jax evaluate` both score through these
functions; they import nothing else of the project.
"""
