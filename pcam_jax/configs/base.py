"""Base config: every field with its default. Presets import this and override a few fields."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # The network (pcam_jax.models.NetworkSpec). Defaults: the paper's ResNet, 793,330 params.
    c.model = ml_collections.ConfigDict(dict(
        stem_width=16,
        widths=(16, 32, 64, 128),
        strides=(1, 2, 2, 1),
        blocks=(2, 3, 3, 2),
        num_classes=2,
        decoder_widths=(64, 32, 16),
        dtype="float32",             # | "bfloat16": mixed precision (params, BN statistics, losses float32)
        input_mean=0.5,               # images are in [0, 1]; the encoder standardises them
        input_std=0.25,
        conv_impl="flipped_dx+s2d",   # | "flipped_dx" | "xla": pcam_jax/models/conv.py, docs/PERFORMANCE.md
        pool_impl="strided",          # | "xla": pcam_jax/models/pooling.py
    ))

    # Input pipeline (pcam_jax.data.pipeline).
    c.data = ml_collections.ConfigDict(dict(
        dataset="synthetic",          # "synthetic" | "mura" | "fracatlas" | "folder" (pcam_jax.data.folder)
        data_dir="",                  # TFDS data dir; "" -> ~/tensorflow_datasets (pcam_jax.data.resolve_data_dir)
        image_size=320,
        resize="stretch",             # "stretch" (MURA baseline) | "pad" (keep aspect, pad to square)
        batch_size=16,
        eval_batch_size=32,
        labelled_batch_size=8,        # stage 3: images with lesion labels per step
        flip=True,                    # random horizontal flip (training only)
        rotate_degrees=30.0,          # random rotation in [-d, d] (training only)
        augment_on="host",            # "host" (tf.data) | "device": uint8 cache + pcam_jax/data/device_augment.py
        shuffle_buffer=2048,
        model_selection_fraction=0.1, # MURA, folder, fracatlas: patient-disjoint slice of train for model selection
        skip_corrupt=False,           # MURA, folder: skip unreadable images (reported) instead of failing
        folder_root="",               # folder: the images + CSV it was prepared from ("": not checked)
        folder_csv="labels.csv",      # folder: the CSV inside folder_root
        folder_test_fraction=0.2,     # folder without a split column: hashed share of test patients
        prefetch=2,
    ))

    # Synthetic radiographs (pcam_jax.data.synthetic), used when data.dataset == "synthetic".
    c.synthetic = ml_collections.ConfigDict(dict(
        image_size=128,
        num_train=2000,
        num_model_selection=300,
        num_test=300,
        abnormal_prevalence=0.5,
        marker_prob_abnormal=0.7,     # P(side marker | abnormal): the shortcut
        marker_prob_normal=0.2,       # P(side marker | normal)
        hardware_prob_abnormal=0.2,   # P(bright hardware | abnormal)
        hardware_prob_normal=0.05,
        num_labelled=100,             # abnormal train images whose masks stage 3 sees
        num_heldout_labelled=50,      # disjoint abnormal images for threshold selection
        seed=0,
        lesion_level="subtle",        # synthetic.LESION_LEVELS: "subtle" (generator 1.0.0's lesions)
                                      # | "clear" (larger, stronger: learnable in the demo's budget)
    ))

    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam",
        learning_rate=1e-4,           # MURA baseline: Adam 1e-4
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        warmup_steps=0,
        schedule="constant",          # | "cosine": to 0 over each stage's steps (pcam_jax/training/state.py)
    ))

    c.stage1 = ml_collections.ConfigDict(dict(
        num_epochs=10,
        class_weighted=False,         # weight the loss by inverse class frequency (MURA baseline)
        abnormal_fraction=0.5,        # share of abnormal training images; class weights 0.5 / freq_c
    ))
    c.stage2 = ml_collections.ConfigDict(dict(
        num_epochs=10,
        omega=10.0,                   # soft mask T(A) = sigmoid(omega * (A - sigma))
        sigma=0.5,
        mask_mode="keep",             # "keep": classify I*T(A) (paper) | "erase": GAIN, I - I*T(A)
        abnormal_only=True,           # L2 on abnormal images only
        attention_class="abnormal",   # "abnormal": every image masked by the abnormal map | "label": its own class's
        # The masked pass normalised by its own batch's BN statistics (their update dropped), not
        # the running ones: with "running", L2 is the only loss that trains the eval-mode network,
        # and with abnormal-only labels it learns "abnormal" for everything (measured, docs/RESULTS.md).
        masked_batch_norm="batch",    # "batch" | "running" (DESIGN's first choice)
        confidence="ema",             # "ema" of training accuracy | "validation" accuracy
        accuracy_ema=0.98,
        init_from="scratch",          # "scratch" (paper) | "stage1"
        logit_difference=False,       # attention map from W[:,1] - W[:,0] instead of W[:,1]
    ))
    c.stage3 = ml_collections.ConfigDict(dict(
        num_epochs=10,
        l3_weight=1.0,                # lambda'
        lesion_loss="mse",            # "mse" (paper) | "balanced_mse": lesion and background
                                      # pixels weigh alike (plain MSE collapses to 0 on small lesions)
                                      # | "balanced_bce": the same with cross-entropy (no saturation)
                                      # | "balanced_bce_dice": the same + soft Dice (the painted
                                      # area priced against the lesion's size)
        lesion_labels="",             # clinician labels of train images, "a.json[,b.csv,masks/]" (MURA,
                                      # folder); pcam_jax/data/clinician_labels.py
        unmatched_labels="error",     # a label naming no train image: "error" | "drop"
        num_labelled=100,             # fracatlas (masks of its own): masked train images stage 3 sees,
        labelled_seed=0,              # chosen by a seeded hash (pcam_jax/data/fracatlas.py); -1: all
        labelled_list="",             # fracatlas: or the first num_labelled of this ranked CSV (what
                                      # `pcam-jax select` writes): its own masks label what was chosen
        # Normal train images (label 0: no lesion, so an empty mask, no clinician needed) appended
        # to each labelled batch: they tell L3 that hardware, casts and markers are not lesions
        # (pcam_jax/data/normal_images.py; measured: docs/RESULTS.md section 8). 0: the paper's L3.
        normal_images_per_batch=0,
        # L3 also averages the errors of this share of each image's background pixels, the worst
        # ones (hard-negative mining: bright hardware among them; pcam_jax/training/losses.py). 0: off.
        hard_background=0.0,
        # Which checkpoint is stage 3's "best": "classification" (train.best_metric on
        # model_selection, the paper's) | "localisation" (its decoder's PxAP on the held-out lesion
        # masks, stage 4's rule; pcam_jax/training/selection.py). Evaluation scores the best.
        select_by="classification",
    ))

    c.stage4 = ml_collections.ConfigDict(dict(
        num_epochs=10,                # the few-label segmenter baseline (--stages 4): L3 alone
    ))

    c.train = ml_collections.ConfigDict(dict(
        log_every_steps=50,
        image_summary_every_steps=500,
        checkpoint_every_steps=0,     # 0: at the end of every epoch only
        keep_checkpoints=2,
        best_metric="auroc",          # model-selection metric kept as the "best" checkpoint
        best_mode="max",
        # A stage without a trained classifier (stage 4; stage 3 with select_by="localisation") keeps
        # instead the checkpoint whose decoder scores the best PxAP on the first this-many held-out
        # lesion masks (data.HELDOUT_MASK_SPLIT; pcam_jax/training/selection.py), its latest when
        # the dataset has none.
        heldout_selection_images=100,
        # Divergence guard (pcam_jax/training/guards.py), 0 turns a check off: stop when a step's
        # loss exceeds this factor times its running median (over divergence_window steps) ...
        divergence_loss_factor=100.0,
        divergence_window=50,
        divergence_norm_growth=1000.0,  # ... or the parameter norm this factor times its start
        dead_gradient_steps=20,       # stop a stage whose gradient norm is exactly 0 (or whose lesion decoder
                                      # is below 1e-3 on every labelled pixel) this many steps running
    ))

    c.eval = ml_collections.ConfigDict(dict(
        # The sections of `pcam-jax evaluate`, in order (pcam_jax/evaluation/evaluators.py).
        evaluators="classification,operating_point,localisation,trust,shortcuts,hardware,confusion_matrix",
        pointing_tolerance=-1.0,      # pixels; < 0: 15 px at 320 px, scaled with the image (6 px at 128)
        score_cam_chunk=32,           # channels per batched forward in Score-CAM
        num_figure_images=6,
        shortcut_limbs=100,           # synthetic: held-out limbs per counterfactual cell (8 cells); 0: skip
        trust_images=16,              # test images with lesions for faithfulness (deletion, ROAD, ...); 0: skip
        sanity_images=4,              # of those, for the cascading-randomisation and random-logit tests
        deletion_steps=20,            # steps of the deletion / insertion curves
        road_iterations=100,          # conjugate-gradient iterations of ROAD's imputation
        lesion_labels="",             # clinician labels of test images for localisation (MURA, folder)
        threshold_fraction=0.3,       # share of their patients held out to choose IoU/Dice thresholds
        unmatched_labels="error",     # a label naming no test image: "error" | "drop"
    ))
    return c
