"""The paper's settings on MURA v1.1: 320 px, the ResNet-23, Adam 1e-4 as the MURA baseline."""

import ml_collections

from pcam_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.data.dataset = "mura"
    c.data.image_size = 320
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.stage1.class_weighted = True
    c.stage1.abnormal_fraction = 0.404  # MURA v1.1 train: 14,873 of 36,808 images abnormal
    c.stage1.num_epochs = 30
    c.stage2.num_epochs = 30
    c.stage3.num_epochs = 10
    c.optimizer.learning_rate = 1e-4
    c.train.log_every_steps = 100
    c.train.image_summary_every_steps = 1000
    return c
