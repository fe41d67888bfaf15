"""The demo: synthetic radiographs, small images, all three stages on a laptop CPU in minutes."""

import ml_collections

from pcam_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.data.dataset = "synthetic"
    c.data.image_size = 128
    # Batch 16: twice the updates per epoch; with 5 stage-1 epochs the lesions are learned
    # while the marker shortcut is on offer (docs/SYNTHETIC_LESIONS.md: counterfactual lesion
    # AUROC 0.95 without hardware, 0.85 pooled over all four confounder cells).
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.synthetic.num_train = 1600      # sized so the whole demo fits 10 minutes on 2 CPU cores
    c.synthetic.num_test = 200
    c.synthetic.num_heldout_labelled = 40
    # "clear": lesions at twice the size and contrast of generator 1.0.0's ("subtle", which this
    # recipe cannot learn in its budget: docs/SYNTHETIC_LESIONS.md); --config.synthetic.lesion_level=subtle
    # restores them.
    c.synthetic.lesion_level = "clear"
    c.optimizer.learning_rate = 1e-3
    c.stage1.num_epochs = 5
    c.stage2.num_epochs = 3
    # Stage 2 fine-tunes stage 1 instead of starting over (the paper's "scratch"): with 3 epochs
    # from scratch and L1 weighted (1 - lambda) ~ 0.3, stage 2 reached model-selection kappa 0.59
    # against stage 1's 0.77; from stage 1, 0.79, and stage 3's decoder PxAP 0.32 -> 0.50
    # (docs/RESULTS.md). --config.stage2.init_from=scratch restores the paper's start.
    c.stage2.init_from = "stage1"
    c.stage3.num_epochs = 3
    c.stage4.num_epochs = 3
    # The paper's plain MSE lets the decoder collapse to 0 on lesions that cover ~0.7% of the
    # pixels (measured on this data: decoder max 1.7e-5 after 4 epochs, PxAP 0.005); the
    # balanced variant weighs lesion and background pixels alike. --config.stage3.lesion_loss=mse
    # restores the paper's loss.
    c.stage3.lesion_loss = "balanced_mse"
    # Stage 3 without the hardware shortcut (docs/RESULTS.md section 8, chosen on model selection, the
    # held-out labelled split and selection limbs): the worst 1 % of each image's background pixels
    # weigh in L3, and 8 normal images with empty masks join each labelled batch. Seeds 0-2: the decoder's
    # response to hardware on normal limbs 0.99 -> 0.24 (seed 0), held-out PxAP 0.46 -> 0.60, hardware
    # effect +0.44 -> +0.38 (stage 1: +0.39); not on every seed.
    # --config.stage3.hard_background=0 --config.stage3.normal_images_per_batch=0 restores the L3 before.
    c.stage3.hard_background = 0.01
    c.stage3.normal_images_per_batch = 8
    c.train.log_every_steps = 10
    c.train.image_summary_every_steps = 50
    return c
