"""FracAtlas (real fractures with masks): the recipe chosen on its model_selection split.

Every choice below and the model_selection numbers behind it: docs/RESULTS.md, "FracAtlas".
"""

import ml_collections

from pcam_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    c = base.get_config()
    c.data.dataset = "fracatlas"
    c.data.model_selection_fraction = 0.15   # of the images left after the 0.2 test share
    c.data.image_size = 256
    # "stretch": FracAtlas images are all about 4:5, so stretching distorts little, while "pad"
    # adds two black bars whose edges stage 2's attention learnt to follow (the stripes).
    c.data.resize = "stretch"
    c.data.batch_size = 16
    c.data.eval_batch_size = 32
    c.data.labelled_batch_size = 8
    c.data.rotate_degrees = 15.0
    c.data.augment_on = "device"             # decode the full-size JPEGs once, not every epoch
    c.optimizer.learning_rate = 1e-3
    # Cosine decay to 0 over each stage: stage-1 model_selection AUROC 0.821 (best epoch) against
    # 0.816 with the constant rate, same seed, and a steadier last third (0.81-0.82 against 0.71-0.82).
    c.optimizer.schedule = "cosine"
    c.stage1.class_weighted = True
    c.stage1.abnormal_fraction = 0.367       # 393 of 1,072 train images fractured
    c.stage1.num_epochs = 20
    c.stage2.num_epochs = 3
    c.stage2.init_from = "stage1"
    # 8 epochs: the decoder under-fits its own 100 labels (pointing game 0.55 on them after 4).
    # Against 4, both ranked by localisation, 3 seeds' model_selection: pointing game +0.01/+0.08/+0.03,
    # PxAP +0.001/+0.008/+0.013, AUROC +0.03/-0.01/+0.01 (docs/RESULTS.md section 6)
    c.stage3.num_epochs = 8
    # Balanced (plain MSE collapses to ~0 on fractures < 1 % of the image), with cross-entropy: the
    # balanced MSE's decoder paints whole bones at ~0.99, where its gradient vanishes. Seed 0, same
    # stage 2, model_selection pointing game by epoch 2/3/4: 0.49/0.57/0.56 against 0.33/0.42/0.47,
    # PxAP 0.060/0.074/0.075 against 0.054/0.065/0.065 (docs/RESULTS.md section 6)
    c.stage3.lesion_loss = "balanced_bce"
    c.stage3.num_labelled = 100
    # hard_background stays 0: with 0.01 (the synthetic preset's) the decoder settles at ~0.33 on
    # fractures and on the hardest background alike; model_selection pointing game 0.43 against 0.47
    # normal_images_per_batch stays 0: with 8 the decoder paints less but points worse on seed 0's
    # model_selection (pointing game 0.46/0.49 against 0.57/0.56 at epochs 3/4; docs/RESULTS.md section 6)
    # Stage 3's best checkpoint by its decoder's PxAP on model_selection's fractures, the rule stage 4
    # (the segmenter it is compared with) uses: the decoder map is what stage 3 is for. Fixed before
    # scoring; of 3 seeds it kept seed 0's epoch and moved seeds 1 and 2's (epoch 2 -> 4, 4 -> 3):
    # test decoder pointing game +0.03 on the mean, AUROC -0.004 (docs/RESULTS.md section 6).
    c.stage3.select_by = "localisation"
    c.stage4.num_epochs = 8                  # the segmenter sees the labelled images as often as stage 3
    c.train.log_every_steps = 20
    c.train.image_summary_every_steps = 200
    c.eval.trust_images = 0                  # faithfulness programs: minutes each at 256 px on CPU
    return c
