"""Clinician lesion labels named in the config, matched to a dataset's records by image path.

Two label sets, each one or more sources (a folder of mask PNGs, a COCO ``.json``, a ``.csv`` of
boxes; `pcam_jax.data.lesions`), given as a list or one comma-separated string:

    config.stage3.lesion_labels   masks of train images: stage 3's L3 (about 100 images). Labels on
                                  images of the model-selection split (a hashed patient slice of the
                                  official train set) are counted and left unused.
    config.eval.lesion_labels     masks of test-split images: localisation in `pcam-jax evaluate`.
                                  The patients with the smallest hashes, ``config.eval.threshold_fraction``
                                  of those labelled, are held out to choose IoU/Dice thresholds and
                                  are not scored.

An entry naming an image that is not in the splits it is for stops the run with one line naming
the file, the entry and the fix, unless ``config.<section>.unmatched_labels = "drop"``. The two
sets must not share an image (`check_config`). A run prints how many labels matched.
Records get their masks through `pcam_jax.data.pipeline.attach_lesion_masks`.
"""

from __future__ import annotations

import collections
import csv
import difflib
import hashlib
import pathlib

from pcam_jax.data import lesions

UNMATCHED_POLICIES = ("error", "drop")
NEEDS_LABELS = ("mura", "folder")  # datasets without masks of their own
# Datasets whose records carry every mask; stage 3's few are chosen when the train split is read:
# config.stage3.num_labelled images by the seeded rule `fracatlas.labelled_paths` (labelled_seed),
# or the first num_labelled of a ranked list (config.stage3.labelled_list; `pcam-jax select` writes it).
CHOOSES_LABELLED = ("fracatlas",)
LIST_COLUMNS = ("path", "score", "rank")   # a ranked image list, as `pcam-jax select` writes it
_LISTED = 3


class LabelMatchError(ValueError):
    """Label entries that match no record (or a forbidden split); the message names them."""


def parse_sources(value) -> tuple[str, ...]:
    """``""`` -> (), ``"a.json,b.csv"`` or ``["a.json", "b.csv"]`` -> ("a.json", "b.csv")."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(s).strip() for s in items if str(s).strip())


def read_list(path) -> list[str]:
    """The image paths of a ranked list CSV, in rank order (a ``rank`` column sorts them, else file order)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist; write one with `pcam-jax select --out {path}`")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: the first row must name the columns, one of them 'path' "
                             f"(as `pcam-jax select` writes: {','.join(LIST_COLUMNS)})")
        rows = [row for row in reader if (row.get("path") or "").strip()]
    try:
        rows.sort(key=lambda row: int(row["rank"])) if rows and "rank" in rows[0] else None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the rank column must hold integers: {e}") from e
    paths = [row["path"].strip() for row in rows]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{path}: an image is listed twice; list each path once")
    if not paths:
        raise ValueError(f"{path}: lists no image")
    return paths


def _policy(config, section: str) -> str:
    policy = str(config[section].unmatched_labels)
    if policy not in UNMATCHED_POLICIES:
        raise ValueError(f"config.{section}.unmatched_labels must be one of {UNMATCHED_POLICIES}, "
                         f"got {policy!r}")
    return policy


def check_config(config, needs_labelled: bool = False) -> None:
    """Fails before any training: stage-3 labels missing where the dataset has none, a bad
    policy, or an image labelled in both sets (it would be scored on what it trained on)."""
    train_sources = parse_sources(config.stage3.lesion_labels)
    eval_sources = parse_sources(config.eval.lesion_labels)
    _policy(config, "stage3"), _policy(config, "eval")
    if config.stage3.labelled_list and config.data.dataset not in CHOOSES_LABELLED:
        raise ValueError(
            f"config.stage3.labelled_list picks stage 3's images among the dataset's own masks, and "
            f"dataset {config.data.dataset!r} has none: label the list's images with `pcam-jax label "
            f"--list {config.stage3.labelled_list} --out labels.json` and pass "
            f"--config.stage3.lesion_labels=labels.json instead.")
    if needs_labelled and not train_sources and config.data.dataset in NEEDS_LABELS:
        raise ValueError(
            f"stage 3 needs lesion labels, and dataset {config.data.dataset!r} has none of its own: "
            "set --config.stage3.lesion_labels=FILE[,FILE] (COCO .json, box .csv or a folder of "
            "mask PNGs keyed by image path; see pcam_jax/data/lesions.py).")
    if train_sources and eval_sources:
        keys = lambda sources: {lesions.path_key(p) for s in sources for p in lesions.label_paths(s)}
        both = keys(train_sources) & keys(eval_sources)
        if both:
            raise ValueError(
                f"config.stage3.lesion_labels and config.eval.lesion_labels both label {len(both)} "
                f"image(s), e.g. {sorted(both)[0]!r}: evaluation must use images stage 3 never "
                "trained on; remove them from one of the two sets.")


def match(sources, sizes_by_split: dict[str, dict], *, use: tuple[str, ...], field: str,
          unmatched: str = "error") -> dict:
    """Masks of ``sources`` on the images of ``use``; prints what matched.

    Args:
      sizes_by_split: {split: {path: (H, W)}} of every split an entry may name (others' entries
        count as unmatched), as from `pcam_jax.data.pipeline.image_sizes`.
      use: the splits whose masks are returned; masks on the other splits are counted only.
    Returns {path: uint8 (H, W)}; several entries (or sources) of one image are united.
    """
    sizes, split_of = {}, {}
    for split, split_sizes in sizes_by_split.items():
        sizes.update(split_sizes)
        split_of.update(dict.fromkeys(split_sizes, split))
    unknown, masks, report = [], {}, lesions.LabelReport()
    for source in sources:  # a bad annotation is skipped and counted, never the whole run
        for path, mask in lesions.load_lesion_masks(source, sizes, unknown=unknown, report=report).items():
            masks[path] = masks[path] | mask if path in masks else mask
    where = " or ".join(sizes_by_split)
    section = field.split(".")[1]
    if unknown and unmatched == "error":
        raise LabelMatchError(
            f"{field}: {len(unknown)} label entr{'y names' if len(unknown) == 1 else 'ies name'} no "
            f"image of the {where} split: {'; '.join(unknown[:_LISTED])}"
            f"{'; ...' if len(unknown) > _LISTED else ''}. Use the image paths the dataset records "
            f"(e.g. 'MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png'), or set "
            f"--config.{section}.unmatched_labels=drop to skip them.")
    used = {p: m for p, m in masks.items() if split_of[p] in use}
    elsewhere = collections.Counter(split_of[p] for p in masks if p not in used)
    notes = [f"{n} on {split} images (unused)" for split, n in sorted(elsewhere.items())]
    if unknown:
        notes.append(f"{len(unknown)} unmatched entries dropped")
    if report.summary():
        notes.append(report.summary())
    print(f"{field}: {len(used)} labelled {'/'.join(use)} images from {len(sources)} source(s)"
          + (f"; {', '.join(notes)}" if notes else ""), flush=True)
    if not used:  # say why: every entry skipped (the first reasons, each naming its file) or elsewhere
        why = f" ({report.summary()})" if report.skipped else ""
        raise LabelMatchError(f"{field}: no label falls on a {'/'.join(use)} image{why}; nothing to "
                              f"{'train on' if section == 'stage3' else 'score'}.")
    return used


def chosen_labelled(config, train_records):
    """Train records of a `CHOOSES_LABELLED` dataset with lesion_labelled True on the
    ``config.stage3.num_labelled`` masked images chosen (all when < 0): the first of
    ``config.stage3.labelled_list`` (a ranked list: the dataset's masks label what an acquisition
    function chose), else those the seeded rule picks (`fracatlas.labelled_paths`, labelled_seed).
    Prints how many and by which rule."""
    from pcam_jax.data import fracatlas, pipeline

    tf = pipeline.tf
    masked = [p.decode() for p, has in train_records.map(lambda r: (r["path"], r["has_mask"]))
              .as_numpy_iterator() if has]
    n, seed = int(config.stage3.num_labelled), int(config.stage3.labelled_seed)
    if config.stage3.labelled_list:
        chosen, rule = listed_first(config.stage3.labelled_list, masked, n, _policy(config, "stage3"))
    else:
        chosen, rule = sorted(fracatlas.labelled_paths(masked, n, seed)), f"labelled_seed={seed}"
    if not chosen:
        raise LabelMatchError(f"config.stage3.num_labelled={n}: no masked train image to label.")
    print(f"config.stage3: {len(chosen)} of {len(masked)} masked train images labelled for stage 3 "
          f"(num_labelled={n}, {rule})", flush=True)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(chosen), tf.ones(len(chosen), tf.bool)), default_value=False)
    return train_records.map(lambda r: {**r, "lesion_labelled": table.lookup(r["path"])})


def listed_first(list_path, masked: list[str], n: int, unmatched: str = "error") -> tuple[list[str], str]:
    """(the first ``n`` listed paths that are masked train images (all when n < 0), the rule in words).

    A listed path that is not one (another split, no mask, a typo) fails under ``unmatched="error"``
    with the first few named and the nearest masked path, or is skipped under ``"drop"``."""
    listed, known = read_list(list_path), set(masked)
    unknown = [p for p in listed if p not in known]
    if unknown and unmatched == "error":
        hint = difflib.get_close_matches(unknown[0], masked, n=1)
        raise LabelMatchError(
            f"{list_path}: {len(unknown)} listed image(s) are not masked train images: "
            f"{'; '.join(unknown[:_LISTED])}{'; ...' if len(unknown) > _LISTED else ''}"
            f"{f' (nearest: {hint[0]!r})' if hint else ''}. List train images only (`pcam-jax select` "
            f"does), or set --config.stage3.unmatched_labels=drop to skip them.")
    usable = [p for p in listed if p in known]
    chosen = usable if n < 0 else usable[:n]
    dropped = f", {len(unknown)} listed non-train or unmasked images skipped" if unknown else ""
    return chosen, f"the first of {list_path}{dropped}"


def training_records(config, train_records, model_selection_records):
    """Train records with the masks of ``config.stage3.lesion_labels`` attached (lesion_labelled
    True on those images), or of `CHOOSES_LABELLED` datasets with their chosen few marked; the
    records unchanged when no labels are configured."""
    sources = parse_sources(config.stage3.lesion_labels)
    if config.data.dataset in CHOOSES_LABELLED:
        if sources:
            raise ValueError(f"dataset {config.data.dataset!r} has its own masks: choose stage 3's "
                             "images with --config.stage3.num_labelled=N (and labelled_seed), not "
                             "config.stage3.lesion_labels.")
        return chosen_labelled(config, train_records)
    if not sources:
        return train_records
    from pcam_jax.data import pipeline

    sizes = {"train": pipeline.image_sizes(train_records),
             "model_selection": pipeline.image_sizes(model_selection_records)}
    masks = match(sources, sizes, use=("train",), field="config.stage3.lesion_labels",
                  unmatched=_policy(config, "stage3"))
    return pipeline.attach_lesion_masks(train_records, masks)


def threshold_patients(patients, fraction: float) -> set[str]:
    """The patients whose labelled images choose thresholds: the ``round(fraction * n)`` with the
    smallest hashes (at least one, and at least one left to score, when n >= 2)."""
    patients = sorted(set(patients))
    if fraction <= 0 or len(patients) < 2:
        return set()
    key = lambda p: hashlib.sha256(f"lesion-threshold/{p}".encode()).digest()
    count = min(max(round(fraction * len(patients)), 1), len(patients) - 1)
    return set(sorted(patients, key=key)[:count])


def _paths_and_patients(records) -> dict[str, str]:
    """{path: patient_id} (the study id, else the path, where records carry no patient)."""
    key = next((k for k in ("patient_id", "study_id") if k in records.element_spec), "path")
    return {p.decode(): q.decode() for p, q in
            records.map(lambda r: (r["path"], r[key])).as_numpy_iterator()}


def evaluation_records(config, records, split: str):
    """``(scored, held_out)`` records of the test split with ``config.eval.lesion_labels``.

    ``scored``: every test record (classification is scored on all), the masks of the
    non-held-out patients attached. ``held_out``: only the held-out patients' labelled images,
    with their masks, for choosing thresholds; None when none are held out. Without configured
    labels: ``(records, None)`` unchanged.
    """
    sources = parse_sources(config.eval.lesion_labels)
    if not sources:
        return records, None
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    masks = match(sources, {split: pipeline.image_sizes(records)}, use=(split,),
                  field="config.eval.lesion_labels", unmatched=_policy(config, "eval"))
    patient_of = _paths_and_patients(records)
    held = threshold_patients({patient_of[p] for p in masks}, float(config.eval.threshold_fraction))
    held_masks = {p: m for p, m in masks.items() if patient_of[p] in held}
    scored_masks = {p: m for p, m in masks.items() if p not in held_masks}
    print(f"config.eval.lesion_labels: {len(scored_masks)} images scored, {len(held_masks)} "
          f"({len(held)} patients) held out to choose thresholds", flush=True)
    scored = pipeline.attach_lesion_masks(records, scored_masks)
    if not held_masks:
        return scored, None
    held_paths = tf.constant(sorted(held_masks))
    held_records = records.filter(lambda r: tf.reduce_any(tf.equal(r["path"], held_paths)))
    return scored, pipeline.attach_lesion_masks(held_records, held_masks)
