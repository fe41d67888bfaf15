"""FracAtlas as a TFDS builder: ``fracatlas`` (manual download, the figshare layout).

FracAtlas (Abedeen et al., Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4,
CC BY 4.0; figshare article 22363012): hand, leg, hip and shoulder radiographs labelled
fractured / not fractured, a COCO polygon per fracture, and a table of body region and
``hardware`` (implants). ``pcam-jax prepare fracatlas --manual_dir DIR`` reads DIR laid out as
the download (DIR may also be the folder that holds ``FracAtlas/``):

    images/Fractured/*.jpg  images/Non_fractured/*.jpg  dataset.csv
    Annotations/COCO JSON/COCO_fracture_masks.json

Records follow the contract in `pcam_jax.data` (`record_features` with ``hardware``):
    image        the file's own bytes (JPEG, grey or RGB, decoded to one channel when read): no
                 re-encoding, which is what made `prepare folder` take 245 s on this data. A file
                 with an EXIF orientation is the one exception: turned upright (PIL's
                 ``exif_transpose``) and stored as grey PNG, because the COCO polygons are drawn in
                 that upright frame (their width/height are the turned ones) and TF ignores EXIF.
    label        from the folder (Fractured = 1). The folder wins over ``dataset.csv``'s
                 ``fractured`` column: it is what the download's classes are, the COCO masks are
                 made for exactly the Fractured folder, and a record whose mask says "fracture"
                 must not be labelled normal. Each disagreement is printed and kept in metadata.
    lesion_mask  the union of the image's COCO polygons (pixel centres inside, `lesions`), at
                 the image's size, PNG; a 1x1 placeholder where an image has none.
    has_mask     True where a mask is stored;  lesion_labelled  False (stage 3's N images are
                 chosen when training reads the records: `labelled_paths`, config.stage3)
    path         "images/Fractured/IMG0000019.jpg" (relative to the FracAtlas folder)
    study_id, patient_id  the image id: FracAtlas publishes no patient or study ids, so the
                 splits are image-disjoint only (a patient's other scan may sit in another split)
    body_part    HAND, LEG, HIP, SHOULDER, or MIXED (several regions) from dataset.csv
    hardware     "1" / "0" from dataset.csv ("" when the image has no row)

Splits from the copy alone, by hashes of the image id (independent of file order): ``test``
(``test_fraction``), then ``model_selection`` (``model_selection_fraction`` of the rest),
``train`` the rest; the fractions form the builder config (``default``: 0.2 and 0.15).
Unreadable files (no image header, or a JPEG cut short: no end-of-image marker, which PIL and
libjpeg would otherwise half-decode) are named, skipped and counted in metadata
(``skipped_unreadable``); bad annotations are skipped and counted, polygons on the edge clipped
(``annotations``). Metadata also has ``label_disagreements``, ``orientation_fixed``,
``num_fractures`` per split and ``source`` (the folder and the sha256 of dataset.csv).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io

import numpy as np
import PIL.Image
import PIL.ImageOps
import tensorflow_datasets as tfds
from etils import epath

from pcam_jax.data import folder, lesions, record_features

ROOT_NAME = "FracAtlas"
IMAGE_FOLDERS = {"Fractured": 1, "Non_fractured": 0}
TABLE = "dataset.csv"
COCO = "Annotations/COCO JSON/COCO_fracture_masks.json"
REGIONS = ("hand", "leg", "hip", "shoulder")
SPLITS = ("train", "model_selection", "test")
_EXIF_ORIENTATION = 274
_LISTED = 20

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download FracAtlas from figshare (https://figshare.com/articles/dataset/22363012, CC BY 4.0) and
unzip it, so that <manual_dir> (or <manual_dir>/{ROOT_NAME}) holds images/Fractured/,
images/Non_fractured/, {TABLE} and "{COCO}"; then run
`pcam-jax prepare fracatlas --manual_dir <manual_dir> [--data_dir DIR]`."""


def hashed_fraction(salt: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, key): split membership without file order."""
    digest = hashlib.sha256(f"{salt}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(image_id: str, model_selection_fraction: float, test_fraction: float) -> str:
    """The split of one image: test by one hash, model selection by another among the rest."""
    if hashed_fraction("fracatlas-test", image_id) < test_fraction:
        return "test"
    if hashed_fraction("fracatlas-model-selection", image_id) < model_selection_fraction:
        return "model_selection"
    return "train"


def labelled_paths(paths, num_labelled: int, seed: int) -> set[str]:
    """Stage 3's labelled set: the ``num_labelled`` paths (all when < 0) with the smallest
    hashes under ``seed``. A seeded rule, not a hand pick; a larger N keeps the smaller N's images."""
    ranked = sorted(paths, key=lambda p: hashlib.sha256(f"fracatlas-stage3/{seed}/{p}".encode()).digest())
    return set(ranked if num_labelled < 0 else ranked[:num_labelled])


def find_root(manual_dir) -> epath.Path:
    """The FracAtlas folder (``manual_dir`` or its ``FracAtlas/``); FileNotFoundError listing
    what the layout lacks."""
    manual_dir = epath.Path(manual_dir)
    root = manual_dir / ROOT_NAME if (manual_dir / ROOT_NAME).is_dir() else manual_dir
    expected = [root / "images" / name for name in IMAGE_FOLDERS] + [root / TABLE, root / COCO]
    missing = [str(p) for p in expected if not p.exists()]
    if missing:
        raise FileNotFoundError(f"FracAtlas tree under {manual_dir} is incomplete; missing:\n  "
                                + "\n  ".join(missing) + "\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
    return root


def body_part(row: dict) -> str:
    """HAND / LEG / HIP / SHOULDER, MIXED when dataset.csv marks several, UNSPECIFIED for none."""
    if row.get("mixed") == "1":
        return "MIXED"
    marked = [r.upper() for r in REGIONS if row.get(r) == "1"]
    return marked[0] if len(marked) == 1 else ("MIXED" if marked else "UNSPECIFIED")


def read_table(path: epath.Path) -> dict[str, dict]:
    """{image file name: row} of dataset.csv; ValueError naming the file when columns lack."""
    reader = csv.DictReader(io.StringIO(path.read_text()))
    needed = ("image_id", "fractured", "hardware", "mixed", *REGIONS)
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} in its header row; restore the "
                         "file from the FracAtlas download.")
    return {row["image_id"].strip(): {k: (v or "").strip() for k, v in row.items()} for row in reader}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image file with its folder label, its table row (if any) and its split."""

    path: str
    image_id: str
    label: int
    row: dict | None
    split: str


def index(root: epath.Path, model_selection_fraction: float, test_fraction: float):
    """(entries, label disagreements, image files without a table row) of the tree."""
    table = read_table(root / TABLE)
    entries, disagreements, no_row = [], [], []
    for class_folder, label in IMAGE_FOLDERS.items():
        for file in sorted((root / "images" / class_folder).iterdir()):
            if not file.is_file() or file.name.startswith("."):
                continue
            path = f"images/{class_folder}/{file.name}"
            row = table.get(file.name)
            if row is None:
                no_row.append(path)
            elif row["fractured"] != str(label):
                disagreements.append(dict(path=path, folder_label=label, csv_fractured=row["fractured"]))
            entries.append(Entry(path, file.name, label, row,
                                 split_of(file.name, model_selection_fraction, test_fraction)))
    return entries, disagreements, no_row


def open_upright(file: epath.Path) -> tuple[bytes | np.ndarray, tuple[int, int], int]:
    """(what the record stores, (H, W) in the annotations' frame, EXIF orientation) of one file.

    The file's bytes when it is upright; a uint8 (H, W, 1) array turned by its EXIF orientation
    otherwise. ValueError naming the file when it is unreadable or cut short.
    """
    data = file.read_bytes()
    try:
        image = PIL.Image.open(io.BytesIO(data))
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{file}: not a readable image ({e})") from e
    if image.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise ValueError(f"{file}: JPEG cut short ({len(data)} bytes, no end-of-image marker)")
    if orientation == 1:
        return data, (image.height, image.width), orientation
    try:
        upright = PIL.ImageOps.exif_transpose(image).convert("L")
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{file}: cannot be decoded ({e})") from e
    return np.asarray(upright)[..., None], (upright.height, upright.width), orientation


def encode_mask(mask: np.ndarray) -> bytes:
    """A 0/1 mask as grey PNG bytes, fast: zlib level 1 (TF's encoder takes ~0.2 s at 2880x2304)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(mask.astype(np.uint8)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def config_for(model_selection_fraction: float = 0.15, test_fraction: float = 0.2) -> folder.FolderConfig:
    """The registered ``default`` config for (0.15, 0.2), else one named after the fractions."""
    return folder.fractions_config(FracAtlas, model_selection_fraction, test_fraction)


class FracAtlas(tfds.core.GeneratorBasedBuilder):
    """FracAtlas fracture radiographs with COCO fracture masks, one record per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images as downloaded, COCO masks, hashed image-disjoint splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [folder.FolderConfig(name="default", description="0.15 model selection, 0.2 test",
                                           model_selection_fraction=0.15, test_fraction=0.2)]

    def __init__(self, *, manual_dir=None, **kwargs):
        self.manual_dir = manual_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="FracAtlas radiographs and fracture masks (see pcam_jax.data.fracatlas).",
            features=record_features(with_hardware=True),
            supervised_keys=("image", "label"),
            homepage="https://doi.org/10.1038/s41597-023-02432-4",
            metadata=tfds.core.MetadataDict(),
            citation="@article{abedeen2023fracatlas, title={FracAtlas: A Dataset for Fracture "
                     "Classification, Localization and Segmentation of Musculoskeletal Radiographs}, "
                     "author={Abedeen, Iftekharul and others}, journal={Scientific Data}, volume={10}, "
                     "pages={521}, year={2023}}")

    def _split_generators(self, dl_manager):
        root = find_root(self.manual_dir or dl_manager.manual_dir)
        config = self.builder_config
        entries, disagreements, no_row = index(root, config.model_selection_fraction, config.test_fraction)
        stored, sizes, skipped, turned = {}, {}, [], {}
        for entry in entries:
            try:
                stored[entry.path], size, orientation = open_upright(root / entry.path)
            except ValueError as e:
                skipped.append(str(e))
                continue
            sizes[entry.image_id] = size
            if orientation != 1:
                turned[entry.path] = orientation
        masks, report, unknown = self._masks(root, sizes)
        kept = [e for e in entries if e.path in stored]
        splits = {name: [e for e in kept if e.split == name] for name in SPLITS}
        empty = [name for name, split_entries in splits.items() if not split_entries]
        if empty:
            raise ValueError(f"split(s) {', '.join(empty)} of {root} would be empty ({len(kept)} readable "
                             f"images); choose other fractions (model_selection {config.model_selection_fraction}, "
                             f"test {config.test_fraction}).")
        self.info.metadata.update(
            source=dict(root=str(root.resolve()), table_sha256=hashlib.sha256((root / TABLE).read_bytes()).hexdigest()),
            model_selection_fraction=config.model_selection_fraction, test_fraction=config.test_fraction,
            label_policy="folder", label_disagreements=disagreements, images_without_row=no_row,
            skipped_unreadable=skipped, orientation_fixed=turned,
            annotations=dict(clipped=report.clipped, skipped=report.skipped, unknown_images=unknown),
            fractured_without_mask=[e.path for e in kept if e.label == 1 and e.image_id not in masks],
            num_images={n: len(es) for n, es in splits.items()},
            num_fractures={n: sum(e.label for e in es) for n, es in splits.items()})
        return {name: self._generate_examples(split_entries, stored, masks)
                for name, split_entries in splits.items()}

    @staticmethod
    def _masks(root: epath.Path, sizes: dict[str, tuple[int, int]]):
        """{image id: mask} from the COCO file on the upright sizes, the report, unknown images."""
        unknown, report = [], lesions.LabelReport()
        masks = lesions.masks_from_coco(root / COCO, sizes, unknown=unknown, report=report)
        return masks, report, unknown

    def _generate_examples(self, entries: list[Entry], stored: dict, masks: dict):
        placeholder = np.zeros((1, 1, 1), np.uint8)
        for entry in entries:
            mask = masks.get(entry.image_id)
            row = entry.row or {}
            yield entry.path, {
                "image": stored[entry.path], "label": entry.label,
                "lesion_mask": placeholder if mask is None else encode_mask(mask),
                "has_mask": mask is not None, "lesion_labelled": False,
                "path": entry.path, "study_id": entry.image_id, "patient_id": entry.image_id,
                "body_part": body_part(row) if row else "UNSPECIFIED",
                "hardware": row.get("hardware", ""),
            }


def builder(data_dir, *, manual_dir=None, model_selection_fraction: float = 0.15,
            test_fraction: float = 0.2) -> FracAtlas:
    """The ``fracatlas`` builder reading (or, with ``download_and_prepare``, writing) ``data_dir``."""
    return FracAtlas(data_dir=str(data_dir), manual_dir=manual_dir,
                     config=config_for(model_selection_fraction, test_fraction))


def prepare(manual_dir, data_dir, *, model_selection_fraction: float = 0.15,
            test_fraction: float = 0.2) -> FracAtlas:
    """Builds FracAtlas from ``manual_dir`` into ``data_dir`` (kept when already prepared)."""
    find_root(manual_dir)
    built = builder(data_dir, manual_dir=manual_dir, model_selection_fraction=model_selection_fraction,
                    test_fraction=test_fraction)
    built.download_and_prepare()
    return built


def prepared_builder(data_dir, *, model_selection_fraction: float = 0.15,
                     test_fraction: float = 0.2) -> FracAtlas:
    """The prepared dataset for reading; FileNotFoundError with the command when it is not."""
    built = builder(data_dir, model_selection_fraction=model_selection_fraction, test_fraction=test_fraction)
    if not built.is_prepared():
        raise FileNotFoundError(
            f"FracAtlas is not prepared in {built.data_dir!r}; run `pcam-jax prepare fracatlas "
            "--manual_dir DIR` first (see pcam_jax.data.fracatlas).")
    return built
