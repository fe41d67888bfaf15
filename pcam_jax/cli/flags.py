"""Every command-line flag of ``pcam-jax``, defined once (absl flags are process-global).

Each command module imports the flags it reads from here; the dispatcher (`pcam_jax.cli`)
imports only the command that runs. ``--config`` takes a preset name (base, synthetic,
mura, tiny) or a config file, and any field can be overridden (``--config.data.batch_size=64``).
"""

from absl import flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file or preset (synthetic, mura, tiny, base); override fields with "
    "--config.a.b=value.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, metrics.jsonl, tensorboard/, eval/.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: config.data.data_dir, "
                               "else ~/tensorflow_datasets).")

# train
STAGES = flags.DEFINE_string("stages", "1,2,3", "Stages to train, in order, e.g. 1,2,3 or 3.")

# evaluate, maps
WHICH = flags.DEFINE_string("which", "best", "Checkpoint per stage: best, latest or a step number.")
OUT = flags.DEFINE_string("out", None, "Output directory (evaluate: default <workdir>/eval).")
SPLIT = flags.DEFINE_string("split", None, "Split to score; default test (synthetic) or valid (MURA).")
STAGE = flags.DEFINE_integer("stage", None, "Stage to load; default the last trained one.")
METHOD = flags.DEFINE_string("method", "positive_cam", "maps, label: map method; select: acquisition function "
                             "(random, uncertainty, map_entropy, map_disagreement, tta; default uncertainty). "
                             "An unknown name is answered with the list.")
EXTRA_METHODS = flags.DEFINE_list("methods", [], "evaluate: map methods scored besides each classifier stage's own "
                                  "(e.g. integrated_gradients,smoothgrad; pcam_jax/maps/registry.py).")
LESION_LABELS = flags.DEFINE_string("lesion_labels", None, "evaluate: clinician labels of test images "
                                    "(COCO .json, box .csv, mask folder; comma-separated), overriding "
                                    "the run's config.eval.lesion_labels.")
EXTERNAL = flags.DEFINE_string("external", None, "evaluate: external validation on a labelled folder "
                                "(labels.csv: path,label[,split,body_part,hardware]; mask PNGs mirroring the "
                                "image paths in FOLDER/masks) instead of the run's test split.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "maps: images per forward pass.")

# prepare
MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "mura: the folder that holds MURA-v1.1/ (see pcam_jax.data.mura).")
SKIP_CORRUPT = flags.DEFINE_boolean("skip_corrupt", None, "mura: skip unreadable images and report them "
                                    "(default: config.data.skip_corrupt).")
LABEL_POLICY = flags.DEFINE_enum("label_policy", "error", ["error", "trust_csv"],
                                 "mura: a study whose CSV label disagrees with its folder stops the build "
                                 "('error') or takes the CSV label with a warning ('trust_csv').")
FOLDER_ROOT = flags.DEFINE_string("folder_root", None, "folder: the folder of radiographs holding the "
                                  "labels CSV (default: config.data.folder_root; pcam_jax.data.folder).")
FOLDER_CSV = flags.DEFINE_string("folder_csv", None, "folder: the CSV inside --folder_root "
                                 "(default: config.data.folder_csv).")
TEST_FRACTION = flags.DEFINE_float("test_fraction", None, "folder without a split column: share of "
                                   "test patients (default: config.data.folder_test_fraction).")
UINT8_CACHE = flags.DEFINE_boolean(
    "uint8_cache", None, "prepare: also store the train split as uint8 at the config's image size "
    "and resize mode (pcam_jax.data.uint8_cache; default: when config.data.augment_on=device).")
MODEL_SELECTION_FRACTION = flags.DEFINE_float(
    "model_selection_fraction", None, "mura: fraction of train patients held out "
    "(default: config.data.model_selection_fraction).")


# select, label (pcam_jax.labelling)
NUM_IMAGES = flags.DEFINE_integer("n", 100, "select: how many images to list.")
ACQUISITION_MAPS = flags.DEFINE_string("maps", None, "select: map methods the map-based acquisitions read, comma-separated "
                                  "(default: map_disagreement the classifier maps of Figure 2, cam,positive_cam,grad_cam; "
                                  "the others positive_cam).")
EXCLUDE = flags.DEFINE_string("exclude", None, "select: label files or earlier lists whose images are left out "
                              "(comma-separated; files that do not exist yet are ignored).")
SEED = flags.DEFINE_integer("seed", 0, "select: seed of the random acquisition.")
LIST = flags.DEFINE_string("list", None, "label: the CSV of images to label (path column; `pcam-jax select` writes it).")
HOST = flags.DEFINE_string("host", "127.0.0.1", "label: address to serve on (default: this machine only).")
PORT = flags.DEFINE_integer("port", 8765, "label: port to serve on (0: any free port).")
IMAGE_ROOT = flags.DEFINE_string("image_root", None, "label without --workdir: the folder the listed paths are "
                                 "relative to (files read as pcam_jax.data.radiographs reads them).")


# mura-world
SIZE = flags.DEFINE_enum("size", "default", ["default", "tiny"], "mura-world: 'default' (~600 "
                         "images, 96-160 px, 100 labelled) or 'tiny' (tests: ~110 images, 40-64 px).")


def which_checkpoint(value: str) -> str | int:
    """``--which``: "best", "latest" or a step number."""
    return int(value) if value.isdigit() else value
