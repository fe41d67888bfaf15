"""Tests only: a tiny network on 32x32 synthetic images; a train step compiles in seconds."""

import ml_collections

from pcam_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.model.stem_width = 4
    c.model.widths = (4, 8)
    c.model.strides = (1, 2)
    c.model.blocks = (1, 1)
    c.model.decoder_widths = (8, 4)
    c.data.dataset = "synthetic"
    c.data.image_size = 32
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.labelled_batch_size = 4
    c.data.shuffle_buffer = 64
    c.synthetic.image_size = 32
    c.synthetic.num_train = 48
    c.synthetic.num_model_selection = 16
    c.synthetic.num_test = 16
    c.synthetic.num_labelled = 8
    c.synthetic.num_heldout_labelled = 4
    c.optimizer.learning_rate = 1e-3
    c.stage1.num_epochs = 1
    c.stage2.num_epochs = 1
    c.stage3.num_epochs = 1
    c.stage4.num_epochs = 1
    c.train.log_every_steps = 2
    c.train.image_summary_every_steps = 4
    c.eval.pointing_tolerance = 2
    c.eval.score_cam_chunk = 8
    c.eval.num_figure_images = 2
    c.eval.shortcut_limbs = 3
    c.eval.trust_images = 4
    c.eval.sanity_images = 2
    c.eval.deletion_steps = 4
    c.eval.road_iterations = 10
    return c
