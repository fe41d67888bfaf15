"""A folder of the user's own radiographs as a TFDS builder: ``radiograph_folder``.

What it reads: a folder of images (8- or 16-bit PNG, TIFF, JPEG, DICOM in any mix) and a CSV
in it (default ``labels.csv``) with a header row:

    path,label[,study,patient,body_part,split,hardware]
    elbow/p1/s1/a.dcm,abnormal,p1/s1,p1,XR_ELBOW
    ...

``path`` is relative to the folder; ``label`` is 0/1 or normal/abnormal (any case). Every image
goes through `pcam_jax.data.radiographs.read_radiograph_uint8`, so a DICOM is read through its
header (window, rescale, MONOCHROME1) whatever its suffix, and never through Pillow's TIFF view
of its preamble, which clips and does not invert.

Records follow the contract in `pcam_jax.data`, shaped like `pcam_jax.data.mura`'s:
    image        uint8 (H, W, 1) at the original size;  label  int64 (normal/abnormal)
    lesion_mask  uint8 (1, 1, 1) zero placeholder;  has_mask, lesion_labelled  False
    path         the CSV's path;  study_id  the ``study`` column, else the path (one image a study)
    patient_id   the ``patient`` column, else the study id (then each study counts as a patient:
                 give a patient column, or model selection is only study-disjoint)
    body_part    the ``body_part`` column, else "UNSPECIFIED"
    hardware     the ``hardware`` column (1/0: an implant or cast is visible), else "" (unknown):
                 `pcam-jax evaluate` compares the subgroups (the shortcut a classifier may take)

Splits ``train``, ``model_selection`` and ``test``, always patient-disjoint:
    with a ``split`` column (train | model_selection | test per row): as written; a patient in
        two splits stops the build. Without model_selection rows, model selection is carved out
        of train as below. A split no row names is left out (an external test set: all "test").
    without it: ``test`` holds the patients whose hashed id falls below ``test_fraction``;
        ``model_selection`` the remaining patients for which `mura.in_model_selection` holds at
        ``model_selection_fraction``; ``train`` the rest. Hashes, not row order, decide.
The two fractions form the builder config (``default``: 0.1 and 0.2; others get their own name).

Build-time policy: ``skip_corrupt`` as in MURA (an unreadable image stops the build, naming the
row and file, or is skipped and listed in metadata). A data_dir holds one folder dataset per
config: the metadata keeps the CSV's sha256 and the folder, and `prepare` refuses to reuse a
dataset built from another CSV (delete its directory, or use another data_dir).
Metadata: ``source`` {root, csv, csv_sha256}, ``split_policy`` ("column" | "hash"), the two
fractions, ``num_patients`` {split: n}, ``patients_from`` (column used), ``skipped_corrupt``
{split: [path]}, ``read_as`` {"DICOM MONOCHROME1 10-bit window LINEAR": n images, ...}.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from pcam_jax.data import record_features
from pcam_jax.data.mura import in_model_selection
from pcam_jax.data.radiographs import RadiographReadError, read_radiograph_with_info, to_uint8

DEFAULT_CSV = "labels.csv"
SPLITS = ("train", "model_selection", "test")
REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("study", "patient", "body_part", "split", "hardware")
UNSPECIFIED_BODY_PART = "UNSPECIFIED"
_LABELS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1}
_MAX_LISTED = 20
_CSV_HELP = ("a CSV with a header row 'path,label[,study,patient,body_part,split,hardware]', paths "
             "relative to the folder, label 0/1 or normal/abnormal, hardware 0/1")


@dataclasses.dataclass(frozen=True)
class FolderEntry:
    """One CSV row: an image with its label, grouping and (optional) requested split."""

    row: int
    path: str
    label: int
    study_id: str
    patient_id: str
    body_part: str
    split: str | None
    hardware: str = ""


def in_test(patient_id: str, fraction: float) -> bool:
    """Whether a patient belongs to the hashed test split (a hash independent of model selection's)."""
    digest = hashlib.sha256(f"folder-test/{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def check_tree(root, csv_name: str = DEFAULT_CSV) -> epath.Path:
    """The CSV's path; FileNotFoundError naming the folder or the CSV that is missing."""
    root = epath.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"radiograph folder {root} does not exist; pass the folder that "
                                f"holds the images and {csv_name}.")
    csv_path = root / csv_name
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found; write {_CSV_HELP}.")
    return csv_path


def _cell(cells: dict, column: str) -> str:
    return (cells.get(column) or "").strip()


def read_entries(csv_path) -> tuple[list[FolderEntry], str]:
    """Every row of the CSV as a `FolderEntry`, and which column gave the patient ids."""
    csv_path = epath.Path(csv_path)
    reader = csv.DictReader(io.StringIO(csv_path.read_text()))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{csv_path}: no column {', '.join(missing)} in the header row "
                         f"{reader.fieldnames}; write {_CSV_HELP}.")
    reader.fieldnames = header
    patients_from = next(c for c in ("patient", "study", "path") if c in header)
    entries, rows = [], {}
    for number, cells in enumerate(reader, start=2):  # row 1 is the header
        if not any((v or "").strip() for v in cells.values() if isinstance(v, str)):
            continue
        where = f"{csv_path} row {number}"
        path = _cell(cells, "path").replace("\\", "/")
        label = _LABELS.get(_cell(cells, "label").lower())
        if not path or path.startswith("/"):
            raise ValueError(f"{where}: path {path!r}; give the image path relative to the folder.")
        if label is None:
            raise ValueError(f"{where}: label {_cell(cells, 'label')!r}; expected 0, 1, normal or "
                             "abnormal.")
        split = _cell(cells, "split").lower() or None if "split" in header else None
        if "split" in header and split not in SPLITS:
            raise ValueError(f"{where}: split {_cell(cells, 'split')!r}; expected one of {SPLITS}.")
        if path in rows:
            raise ValueError(f"{csv_path} rows {rows[path]} and {number} both list {path}; remove "
                             "the duplicate row.")
        rows[path] = number
        hardware = _cell(cells, "hardware")
        if hardware not in ("", "0", "1"):
            raise ValueError(f"{where}: hardware {hardware!r}; expected 0, 1 or empty (unknown).")
        study = _cell(cells, "study") or path
        entries.append(FolderEntry(number, path, label, study, _cell(cells, "patient") or study,
                                   _cell(cells, "body_part") or UNSPECIFIED_BODY_PART, split, hardware))
    if not entries:
        raise ValueError(f"{csv_path} lists no images; write {_CSV_HELP}.")
    return entries, patients_from


def assign_splits(entries: list[FolderEntry], model_selection_fraction: float,
                  test_fraction: float) -> tuple[dict[str, list[FolderEntry]], str]:
    """{split: entries} (patient-disjoint) and the policy used, "column" or "hash"."""
    explicit = any(e.split is not None for e in entries)
    if explicit:
        splits_of = collections.defaultdict(set)
        for e in entries:
            splits_of[e.patient_id].add(e.split)
        mixed = sorted(p for p, s in splits_of.items() if len(s) > 1)
        if mixed:
            listed = ", ".join(f"{p} ({'/'.join(sorted(splits_of[p]))})" for p in mixed[:_MAX_LISTED])
            raise ValueError(f"{len(mixed)} patients have rows in more than one split: {listed}; "
                             "give all of a patient's rows the same split.")
        carve = not any(e.split == "model_selection" for e in entries)
        requested = [e.split for e in entries]
    else:
        carve = True
        requested = ["test" if in_test(e.patient_id, test_fraction) else "train" for e in entries]
    splits = {name: [] for name in SPLITS}
    for e, name in zip(entries, requested):
        if carve and name == "train" and in_model_selection(e.patient_id, model_selection_fraction):
            name = "model_selection"
        splits[name].append(e)
    return splits, "column" if explicit else "hash"


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    """Builder config: the patient fractions held out for model selection and (hashed) test."""

    model_selection_fraction: float = 0.1
    test_fraction: float = 0.2


def fractions_config(builder_class, model_selection_fraction: float, test_fraction: float) -> FolderConfig:
    """``builder_class``'s registered ``default`` config when the fractions are its own, else a
    config named after them (a folder, FracAtlas: both split by two hashed fractions)."""
    for name, value in (("model_selection_fraction", model_selection_fraction),
                        ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value}; expected 0 < fraction < 1")
    default = builder_class.BUILDER_CONFIGS[0]
    if (model_selection_fraction, test_fraction) == (default.model_selection_fraction, default.test_fraction):
        return default
    return FolderConfig(name=f"ms{model_selection_fraction:g}_test{test_fraction:g}",
                        description=f"{model_selection_fraction:g} model selection, {test_fraction:g} test",
                        model_selection_fraction=model_selection_fraction, test_fraction=test_fraction)


def config_for(model_selection_fraction: float = 0.1, test_fraction: float = 0.2) -> FolderConfig:
    """The registered ``default`` config for (0.1, 0.2), else one named after the fractions."""
    return fractions_config(RadiographFolder, model_selection_fraction, test_fraction)


def _source(root, csv_name: str) -> dict:
    csv_path = epath.Path(root) / csv_name
    return dict(root=str(epath.Path(root).resolve()), csv=csv_name,
                csv_sha256=hashlib.sha256(csv_path.read_bytes()).hexdigest())


class RadiographFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of radiographs (PNG, TIFF, DICOM) labelled by a CSV, one record per image."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Folder + CSV of radiographs, patient-disjoint splits.",
                     "1.1.0": "A hardware column (0/1, empty: unknown) per record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Put the images and {DEFAULT_CSV} ({_CSV_HELP}) in one folder "
                                    "and pass it as root.")
    BUILDER_CONFIGS = [FolderConfig(name="default", description="0.1 model selection, 0.2 test",
                                    model_selection_fraction=0.1, test_fraction=0.2)]

    def __init__(self, *, root=None, csv_name: str = DEFAULT_CSV, skip_corrupt: bool = False,
                 **kwargs):
        self.root = root
        self.csv_name = csv_name
        self.skip_corrupt = skip_corrupt
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="The user's radiographs from a folder and a CSV (see pcam_jax.data.folder).",
            features=record_features(with_hardware=True),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = epath.Path(self.root or dl_manager.manual_dir)
        csv_path = check_tree(root, self.csv_name)
        entries, patients_from = read_entries(csv_path)
        missing = [f"row {e.row}: {e.path}" for e in entries if not (root / e.path).exists()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images listed in {csv_path} are missing under {root}:\n  "
                + "\n  ".join(missing[:_MAX_LISTED]) + "\nFix the paths (relative to the folder) "
                "or remove those rows.")
        config = self.builder_config
        splits, policy = assign_splits(entries, config.model_selection_fraction,
                                       config.test_fraction)
        if policy == "column":  # a split the column never names is left out: an external
            splits = {n: es for n, es in splits.items() if es}  # set may be all "test"
        for name, split_entries in splits.items():
            if not split_entries:
                raise ValueError(
                    f"split {name!r} of {csv_path} would be empty ({len(entries)} images, "
                    f"{len({e.patient_id for e in entries})} patients, split policy {policy}); "
                    "add a 'split' column naming train/model_selection/test, or change "
                    "model_selection_fraction / test_fraction.")
        self.info.metadata.update(
            source=_source(root, self.csv_name), split_policy=policy, patients_from=patients_from,
            model_selection_fraction=config.model_selection_fraction,
            test_fraction=config.test_fraction,
            num_patients={n: len({e.patient_id for e in es}) for n, es in splits.items()},
            skipped_corrupt={name: [] for name in splits}, read_as={})
        return {name: self._generate_examples(root, csv_path, name, split_entries)
                for name, split_entries in splits.items()}

    def _generate_examples(self, root: epath.Path, csv_path, split: str, entries):
        skipped = self.info.metadata["skipped_corrupt"][split]
        read_as = self.info.metadata["read_as"]
        placeholder = np.zeros((1, 1, 1), np.uint8)
        for entry in entries:
            try:
                image, info = read_radiograph_with_info(root / entry.path)
            except RadiographReadError as e:
                if not self.skip_corrupt:
                    raise RadiographReadError(
                        f"{csv_path} row {entry.row}: {e} (or build with skip_corrupt=True to "
                        "skip unreadable images)") from e
                skipped.append(entry.path)
                logging.warning("skip_corrupt: skipping row %d, %s: %s", entry.row, entry.path, e)
                continue
            kind = f"{info.format} {info.photometric} {info.bits}-bit {info.voi}"
            read_as[kind] = read_as.get(kind, 0) + 1
            yield entry.path, {
                "image": to_uint8(image)[..., None], "label": entry.label,
                "lesion_mask": placeholder, "has_mask": False, "lesion_labelled": False,
                "path": entry.path, "study_id": entry.study_id, "patient_id": entry.patient_id,
                "body_part": entry.body_part, "hardware": entry.hardware,
            }
        if skipped:
            logging.warning("skip_corrupt: skipped %d unreadable images in %s: %s",
                            len(skipped), split, skipped)


def builder(data_dir, *, root=None, csv_name: str = DEFAULT_CSV,
            model_selection_fraction: float = 0.1, test_fraction: float = 0.2,
            skip_corrupt: bool = False) -> RadiographFolder:
    """The ``radiograph_folder`` builder reading (or, with ``download_and_prepare``, writing)
    ``data_dir``; ``root`` (the folder with the images and the CSV) is only needed to build."""
    return RadiographFolder(data_dir=str(data_dir),
                            config=config_for(model_selection_fraction, test_fraction),
                            root=root, csv_name=csv_name, skip_corrupt=skip_corrupt)


def check_source(built: RadiographFolder, root, csv_name: str = DEFAULT_CSV) -> None:
    """ValueError when the prepared dataset was built from another CSV or folder than these."""
    recorded = dict(built.info.metadata.get("source", {}))
    current = _source(root, csv_name)
    if recorded.get("csv_sha256") != current["csv_sha256"] or recorded.get("root") != current["root"]:
        raise ValueError(
            f"{built.data_dir} already holds a radiograph_folder dataset built from "
            f"{recorded.get('root')}/{recorded.get('csv')} (sha256 {recorded.get('csv_sha256')}), "
            f"not {current['root']}/{csv_name} (sha256 {current['csv_sha256']}); delete that "
            "directory to rebuild, or use another data_dir.")


def prepare(root, data_dir, *, csv_name: str = DEFAULT_CSV, model_selection_fraction: float = 0.1,
            test_fraction: float = 0.2, skip_corrupt: bool = False) -> RadiographFolder:
    """Builds the dataset from the folder ``root`` and its CSV into ``data_dir``; returns it.

    A dataset already prepared from the same CSV is reused; one from another CSV is refused.
    """
    check_tree(root, csv_name)
    folder = builder(data_dir, root=root, csv_name=csv_name, skip_corrupt=skip_corrupt,
                     model_selection_fraction=model_selection_fraction, test_fraction=test_fraction)
    if folder.is_prepared():
        check_source(folder, root, csv_name)
    folder.download_and_prepare()
    return folder


def prepared_builder(data_dir, *, root=None, csv_name: str = DEFAULT_CSV,
                     model_selection_fraction: float = 0.1,
                     test_fraction: float = 0.2) -> RadiographFolder:
    """The prepared dataset for reading; FileNotFoundError with the command when it is not, and
    (when ``root`` is given) ValueError when it was built from another CSV."""
    folder = builder(data_dir, root=root, csv_name=csv_name,
                     model_selection_fraction=model_selection_fraction, test_fraction=test_fraction)
    if not folder.is_prepared():
        raise FileNotFoundError(
            f"No radiograph_folder dataset is prepared in {folder.data_dir!r}; run `pcam-jax "
            "prepare folder --folder_root DIR` first (see pcam_jax.data.folder).")
    if root:
        check_source(folder, root, csv_name)
    return folder
