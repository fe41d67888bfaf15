"""MURA v1.1 as a TFDS builder: ``mura`` (manual download).

MURA cannot be downloaded by code: register at Stanford ML Group, download the zip by hand and
unpack it so that ``<manual_dir>/MURA-v1.1/`` exists (see `MANUAL_DOWNLOAD_INSTRUCTIONS`).
``pcam-jax prepare mura --manual_dir DIR`` (or `prepare`) then writes the TFDS dataset.

Records follow the contract in `pcam_jax.data` with these MURA-specific choices:
    image           uint8 (H, W, 1) at the original size; RGB/palette PNGs converted to one
                    channel with PIL's ITU-R 601-2 luma (MURA's RGB files are gray in RGB).
    label           int64 (ClassLabel normal/abnormal), the study's label (see label policy).
    lesion_mask     uint8 (1, 1, 1) zero placeholder on every record (MURA has no lesion
                    masks). With has_mask False the pipeline never decodes it and uses zeros
                    of the image's size; clinician masks (`pcam_jax.data.lesions`) are attached
                    by path at read time with `pcam_jax.data.pipeline.attach_lesion_masks`.
    has_mask        False;  lesion_labelled  False
    path            "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png"
    study_id        "MURA-v1.1/train/XR_WRIST/patient00001/study1_positive" (no trailing "/")
    patient_id      "patient00001";  body_part "XR_WRIST"

Splits: ``train`` (official train minus the model-selection patients), ``model_selection``
(every image of the patients whose hashed id falls below ``model_selection_fraction``: patient
disjoint from ``train``, independent of file order, about that fraction of patients) and
``valid`` (the official validation set, our test set). The fraction is the builder config:
``default`` is 0.1; another fraction gets its own config name (``ms0.2``) and directory.

Build-time policies (they never change a clean dataset, so they are not part of the config):
    label_policy="error" (default): a study whose ``*_labeled_studies.csv`` label disagrees with
        its ``_positive``/``_negative`` folder stops the build, listing every such study.
        "trust_csv": use the CSV label, log a warning listing them, record them in metadata.
    skip_corrupt=False (default): an unreadable image stops the build, naming the file.
        True: skip it, log the count and the paths, record them in metadata.
Metadata (``builder.info.metadata``, saved as ``metadata.json`` in the dataset directory):
``skipped_corrupt`` {split: [path]}, ``label_disagreements`` [{study_id, csv_label,
folder_label}], ``label_policy``, ``model_selection_fraction``, ``num_patients`` {split: n}.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from pcam_jax.data import record_features

MURA_ROOT = "MURA-v1.1"
OFFICIAL_SPLITS = ("train", "valid")
LABEL_POLICIES = ("error", "trust_csv")
_FOLDER_LABELS = {"negative": 0, "positive": 1}
_CONVERTIBLE_MODES = ("L", "RGB", "RGBA", "LA", "P", "1")
_MAX_LISTED = 20  # entries listed in one error message

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
MURA v1.1 needs a manual download (its licence forbids redistribution).
1. Register and download MURA-v1.1.zip at https://stanfordmlgroup.github.io/competitions/mura/
2. Unzip it inside a folder of your choice, the manual dir, so that it holds exactly:
     <manual_dir>/{MURA_ROOT}/train_image_paths.csv       (header-less, one image path a row)
     <manual_dir>/{MURA_ROOT}/train_labeled_studies.csv   (header-less, "study_path/,label")
     <manual_dir>/{MURA_ROOT}/valid_image_paths.csv
     <manual_dir>/{MURA_ROOT}/valid_labeled_studies.csv
     <manual_dir>/{MURA_ROOT}/{{train,valid}}/XR_<BODY_PART>/patientNNNNN/studyK_{{positive,negative}}/imageN.png
3. Run `pcam-jax prepare mura --manual_dir <manual_dir> [--data_dir DIR]`
   (default manual dir: <data_dir>/downloads/manual/).
"""


def csv_names(split: str) -> tuple[str, str]:
    """The two header-less CSVs of an official split: image paths, labelled studies."""
    return f"{split}_image_paths.csv", f"{split}_labeled_studies.csv"


def in_model_selection(patient_id: str, fraction: float) -> bool:
    """Whether a train patient belongs to the model-selection slice: a hash, not file order."""
    digest = hashlib.sha256(f"mura-model-selection/{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One image listed in ``<split>_image_paths.csv``, with its study's label."""

    path: str
    study_id: str
    patient_id: str
    body_part: str
    label: int


def check_tree(manual_dir) -> epath.Path:
    """The ``MURA-v1.1`` root; FileNotFoundError listing whatever the layout lacks."""
    root = epath.Path(manual_dir) / MURA_ROOT
    expected = [root] + [root / name for split in OFFICIAL_SPLITS for name in csv_names(split)]
    expected += [root / split for split in OFFICIAL_SPLITS]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"MURA tree under {manual_dir} is incomplete; missing:\n  " + "\n  ".join(missing)
            + "\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
    return root


def _csv_rows(csv_path: epath.Path):
    """(row number from 1, cells) of a header-less CSV, skipping blank lines."""
    for number, cells in enumerate(csv.reader(io.StringIO(csv_path.read_text())), start=1):
        if any(c.strip() for c in cells):
            yield number, [c.strip() for c in cells]


def read_labeled_studies(csv_path: epath.Path) -> dict[str, int]:
    """{study path without trailing "/": label} from a ``*_labeled_studies.csv``."""
    studies = {}
    for number, cells in _csv_rows(csv_path):
        if len(cells) != 2 or cells[1] not in ("0", "1"):
            raise ValueError(
                f"{csv_path} row {number}: expected 'study_path/,label' with label 0 or 1 and no "
                f"header row, got {cells!r}. Restore the file from the MURA-v1.1 zip.")
        studies[cells[0].rstrip("/")] = int(cells[1])
    return studies


def _parse_image_path(path: str, split: str, where: str) -> tuple[str, str, str, int]:
    """(study_id, patient_id, body_part, folder label) of one image path from a CSV."""
    parts = path.split("/")
    study_suffix = parts[4].rsplit("_", 1)[-1] if len(parts) == 6 else ""
    if (len(parts) != 6 or parts[:2] != [MURA_ROOT, split] or not parts[2].startswith("XR_")
            or study_suffix not in _FOLDER_LABELS):
        raise ValueError(
            f"{where}: {path!r} is not '{MURA_ROOT}/{split}/XR_<PART>/patientN/studyK_<positive|"
            "negative>/imageN.png'. Restore the file from the MURA-v1.1 zip.")
    return "/".join(parts[:5]), parts[3], parts[2], _FOLDER_LABELS[study_suffix]


def index_split(root: epath.Path, split: str):
    """Every image of an official split with its study's CSV label.

    Returns (entries, disagreements, missing): ``disagreements`` lists the studies whose CSV
    label differs from their ``_positive``/``_negative`` folder (see `check_labels`),
    ``missing`` the listed images absent from disk.
    """
    paths_csv, studies_csv = (root / name for name in csv_names(split))
    study_labels = read_labeled_studies(studies_csv)
    entries, disagreements, unlabelled, missing, rows = [], {}, [], [], {}
    for number, cells in _csv_rows(paths_csv):
        path = cells[0]
        if path in rows:
            raise ValueError(f"{paths_csv} rows {rows[path]} and {number} both list {path}; "
                             "remove the duplicate row.")
        rows[path] = number
        study_id, patient_id, body_part, folder_label = _parse_image_path(
            path, split, f"{paths_csv} row {number}")
        if study_id not in study_labels:
            unlabelled.append(f"{study_id} (row {number})")
            continue
        csv_label = study_labels[study_id]
        if csv_label != folder_label:
            disagreements[study_id] = dict(study_id=study_id, csv_label=csv_label,
                                           folder_label=folder_label)
        if not (root.parent / path).exists():
            missing.append(path)
        entries.append(ImageEntry(path, study_id, patient_id, body_part, csv_label))
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} images of {paths_csv} belong to studies absent from {studies_csv}:"
            f"\n  " + "\n  ".join(unlabelled[:_MAX_LISTED]) + "\nAdd a 'study_path/,label' row.")
    return entries, list(disagreements.values()), missing


def check_labels(disagreements: list[dict], label_policy: str) -> None:
    """Applies the label policy: ValueError listing every disagreeing study under "error",
    a warning under "trust_csv" (the entries already carry the CSV label)."""
    if label_policy not in LABEL_POLICIES:
        raise ValueError(f"label_policy={label_policy!r}; expected one of {LABEL_POLICIES}")
    if not disagreements:
        return
    listed = "\n  ".join(f"{d['study_id']}: csv {d['csv_label']}, folder {d['folder_label']}"
                         for d in disagreements[:_MAX_LISTED])
    if label_policy == "error":
        raise ValueError(
            f"{len(disagreements)} studies in *_labeled_studies.csv have a label that disagrees "
            f"with their positive/negative folder:\n  {listed}\nFix the CSV or the folder, or "
            "build with label_policy='trust_csv' (--label_policy=trust_csv) to use the CSV labels.")
    logging.warning("label_policy=trust_csv: %d studies take their CSV label over their folder:"
                    "\n  %s", len(disagreements), listed)


def load_grayscale(file: epath.Path, name: str) -> np.ndarray:
    """uint8 (H, W, 1) of a PNG; ValueError naming ``name`` when it cannot be decoded."""
    try:
        with file.open("rb") as f:
            image = PIL.Image.open(f)
            image.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated/invalid-file errors
        raise ValueError(f"corrupt or unreadable image {name}: {e}. Replace it from the MURA zip, "
                         "or build with skip_corrupt=True (--skip_corrupt) to skip it.") from e
    if image.mode not in _CONVERTIBLE_MODES:
        raise ValueError(f"image {name} has PIL mode {image.mode!r}; expected 8-bit gray or RGB.")
    return np.asarray(image.convert("L"))[..., None]


@dataclasses.dataclass
class MuraConfig(tfds.core.BuilderConfig):
    """Builder config: the fraction of train patients held out for model selection."""

    model_selection_fraction: float = 0.1


def config_for(model_selection_fraction: float) -> MuraConfig:
    """The registered ``default`` config for 0.1, else a config named after the fraction."""
    if not 0.0 < model_selection_fraction < 1.0:
        raise ValueError(f"model_selection_fraction={model_selection_fraction}; expected 0 < f < 1")
    if model_selection_fraction == Mura.BUILDER_CONFIGS[0].model_selection_fraction:
        return Mura.BUILDER_CONFIGS[0]
    return MuraConfig(name=f"ms{model_selection_fraction:g}",
                      description=f"{model_selection_fraction:g} of train patients held out",
                      model_selection_fraction=model_selection_fraction)


class Mura(tfds.core.GeneratorBasedBuilder):
    """MURA v1.1 musculoskeletal radiographs (Rajpurkar et al. 2018), one record per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MURA v1.1 with a patient-disjoint model-selection slice of train."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [MuraConfig(name="default", description="0.1 of train patients held out",
                                  model_selection_fraction=0.1)]

    def __init__(self, *, manual_dir=None, skip_corrupt: bool = False,
                 label_policy: str = "error", **kwargs):
        if label_policy not in LABEL_POLICIES:
            raise ValueError(f"label_policy={label_policy!r}; expected one of {LABEL_POLICIES}")
        self.manual_dir = manual_dir  # None: TFDS's download_config.manual_dir
        self.skip_corrupt = skip_corrupt
        self.label_policy = label_policy
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="MURA v1.1 bone radiographs; labels per study (see pcam_jax.data.mura).",
            features=record_features(),
            supervised_keys=("image", "label"),
            homepage="https://stanfordmlgroup.github.io/competitions/mura/",
            metadata=tfds.core.MetadataDict(),
            citation="@article{rajpurkar2017mura, title={MURA: Large Dataset for Abnormality "
                     "Detection in Musculoskeletal Radiographs}, author={Rajpurkar, Pranav and "
                     "others}, journal={arXiv:1712.06957}, year={2017}}",
        )

    def _split_generators(self, dl_manager):
        root = check_tree(self.manual_dir or dl_manager.manual_dir)
        fraction = self.builder_config.model_selection_fraction
        indexed = {split: index_split(root, split) for split in OFFICIAL_SPLITS}
        missing = [path for split in OFFICIAL_SPLITS for path in indexed[split][2]]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images listed in the MURA CSVs are missing under "
                f"{root.parent}, e.g.:\n  " + "\n  ".join(missing[:_MAX_LISTED])
                + "\nUnzip the complete MURA-v1.1 archive there.")
        disagreements = indexed["train"][1] + indexed["valid"][1]
        check_labels(disagreements, self.label_policy)
        train = indexed["train"][0]
        splits = {
            "train": [e for e in train if not in_model_selection(e.patient_id, fraction)],
            "model_selection": [e for e in train if in_model_selection(e.patient_id, fraction)],
            "valid": indexed["valid"][0],
        }
        for name, entries in splits.items():
            if not entries:
                raise ValueError(f"split {name!r} would be empty (model_selection_fraction="
                                 f"{fraction}); choose one that leaves patients on both sides.")
        self.info.metadata.update(
            label_policy=self.label_policy, model_selection_fraction=fraction,
            label_disagreements=disagreements,
            num_patients={n: len({e.patient_id for e in es}) for n, es in splits.items()},
            skipped_corrupt={name: [] for name in splits})
        return {name: self._generate_examples(root.parent, name, entries)
                for name, entries in splits.items()}

    def _generate_examples(self, base: epath.Path, split: str, entries: list[ImageEntry]):
        skipped = self.info.metadata["skipped_corrupt"][split]
        placeholder = np.zeros((1, 1, 1), np.uint8)
        for entry in entries:
            try:
                image = load_grayscale(base / entry.path, entry.path)
            except ValueError:
                if not self.skip_corrupt:
                    raise
                skipped.append(entry.path)
                logging.warning("skip_corrupt: skipping unreadable image %s", entry.path)
                continue
            yield entry.path, {
                "image": image, "label": entry.label, "lesion_mask": placeholder,
                "has_mask": False, "lesion_labelled": False, "path": entry.path,
                "study_id": entry.study_id, "patient_id": entry.patient_id,
                "body_part": entry.body_part,
            }
        if skipped:
            logging.warning("skip_corrupt: skipped %d unreadable images in %s: %s",
                            len(skipped), split, skipped)


def builder(data_dir, *, manual_dir=None, model_selection_fraction: float = 0.1,
            skip_corrupt: bool = False, label_policy: str = "error") -> Mura:
    """The ``mura`` builder reading (or, with ``download_and_prepare``, writing) ``data_dir``.

    ``manual_dir`` (the folder holding ``MURA-v1.1/``) is only needed to build; without it
    TFDS looks in ``<data_dir>/downloads/manual``. Reading needs only data_dir and the fraction.
    """
    return Mura(data_dir=str(data_dir), config=config_for(model_selection_fraction),
                manual_dir=manual_dir, skip_corrupt=skip_corrupt, label_policy=label_policy)


def prepare(manual_dir, data_dir, *, model_selection_fraction: float = 0.1,
            skip_corrupt: bool = False, label_policy: str = "error") -> Mura:
    """Builds the dataset from ``<manual_dir>/MURA-v1.1`` into ``data_dir``; returns the builder.

    An already prepared dataset is reused (delete its directory to rebuild).
    """
    check_tree(manual_dir)
    mura = builder(data_dir, manual_dir=manual_dir,
                   model_selection_fraction=model_selection_fraction,
                   skip_corrupt=skip_corrupt, label_policy=label_policy)
    mura.download_and_prepare()
    return mura
