"""The demo: synthetic radiographs, small images, all three stages on a laptop CPU in minutes."""

import ml_collections

from pcam_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.data.dataset = "synthetic"
    c.data.image_size = 128
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.optimizer.learning_rate = 1e-3
    c.stage1.num_epochs = 4
    c.stage2.num_epochs = 4
    c.stage3.num_epochs = 4
    c.train.log_every_steps = 10
    c.train.image_summary_every_steps = 50
    return c
