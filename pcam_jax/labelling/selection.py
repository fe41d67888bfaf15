"""`pcam-jax select`: rank the unlabelled abnormal train images of a run's dataset for labelling.

Candidates are the train split's abnormal images that carry no lesion label yet: not labelled by
the dataset itself (``lesion_labelled``), not named by the run's ``config.stage3.lesion_labels``
and not named in any ``exclude`` file (label files: a COCO JSON the labelling page wrote, a box
CSV, a mask folder; or an earlier selection CSV). They are decoded and resized by the training
pipeline (`pcam_jax.data.pipeline.eval_batches`, fixed-size batches: one compilation) and scored
by `pcam_jax.labelling.acquisition`. The list is written as CSV ``path,score,rank`` (rank 1 =
label first), which `pcam-jax label --list` reads.
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np

from pcam_jax.data import clinician_labels, lesions
from pcam_jax.labelling import acquisition



def excluded_paths(config, exclude=()) -> set[str]:
    """Image paths already labelled: the config's stage-3 labels and every ``exclude`` source
    that exists (a label file of `pcam_jax.data.lesions`, every image of a COCO file, the ones
    decided "no lesion" or skipped in `pcam-jax label` included, or a selection CSV's paths)."""
    sources = list(clinician_labels.parse_sources(config.stage3.lesion_labels))
    sources += [s for s in clinician_labels.parse_sources(exclude) if pathlib.Path(s).exists()]
    paths = set()
    for source in sources:
        if _is_list(source):
            paths |= set(clinician_labels.read_list(source))
        elif pathlib.Path(source).suffix.lower() == ".json":  # every image decided there, "no lesion" too
            paths |= lesions.label_paths(source) | _coco_images(source)
        else:
            paths |= lesions.label_paths(source)
    return paths


def _coco_images(source) -> set[str]:
    try:
        return {image["file_name"] for image in json.loads(pathlib.Path(source).read_text())["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{source}: not a COCO file with 'images' (id, file_name, ...): {e}") from e


def _is_list(source) -> bool:
    source = pathlib.Path(source)
    if source.suffix.lower() != ".csv":
        return False
    with source.open(newline="") as f:
        header = next(csv.reader(f), [])
    return "path" in header and "x0" not in header


def candidate_records(config, excluded: set[str], data_dir=None):
    """The train records that may be proposed: abnormal, unlabelled, not in ``excluded``."""
    from pcam_jax.data import pipeline

    tf = pipeline.tf
    records = pipeline.load_records(config, "train", data_dir)
    keep = tf.constant(sorted(excluded) or [""])
    labelled_field = "lesion_labelled" in records.element_spec
    # do_not_convert: autograph would resolve `tf` in this module's globals, where it is not (seen in a test run)
    return records.filter(tf.autograph.experimental.do_not_convert(lambda r: tf.logical_and(
        tf.logical_and(tf.equal(r["label"], 1),
                       tf.logical_not(r["lesion_labelled"]) if labelled_field else tf.constant(True)),
        tf.logical_not(tf.reduce_any(tf.equal(r["path"], keep))))))


def score_candidates(run, records, acquisition_name: str, *, methods=None, seed: int = 0,
                     progress: bool = True) -> tuple[list[str], np.ndarray]:
    """(paths, scores) of every candidate record, in stored order."""
    from tqdm.auto import tqdm

    from pcam_jax.data import pipeline

    if acquisition_name not in acquisition.ACQUISITIONS:
        raise ValueError(f"unknown acquisition {acquisition_name!r}; choose from {', '.join(acquisition.ACQUISITIONS)}")
    listed = [p.decode() for p in records.map(lambda r: r["path"]).as_numpy_iterator()]
    if acquisition_name == "random":  # no model: the paths alone, then a seeded draw
        return listed, acquisition.random_scores(len(listed), seed)
    if not listed:
        return [], np.zeros((0,), np.float32)
    config = run.config
    fn = acquisition.make_score_fn(run.model, acquisition_name, methods=methods,
                                   image_size=int(config.data.image_size), chunk=int(config.eval.score_cam_chunk))
    paths, scores = [], []
    bar = tqdm(total=len(listed), desc=f"select ({acquisition_name})", unit="img", file=sys.stderr, disable=not progress)
    for batch in pipeline.eval_batches(config, records):
        valid = batch["valid"]
        out = np.asarray(fn(run.variables, batch["image"]))
        paths += list(batch["path"][valid])
        scores.append(out[valid])
        bar.update(int(valid.sum()))
    bar.close()
    return paths, np.concatenate(scores)


def rank(paths: list[str], scores: np.ndarray, n: int) -> list[tuple[str, float, int]]:
    """The ``n`` highest scores as (path, score, rank), rank 1 first; ties by path (deterministic)."""
    order = sorted(range(len(paths)), key=lambda i: (-float(scores[i]), paths[i]))[:n]
    return [(paths[i], float(scores[i]), r + 1) for r, i in enumerate(order)]


def write_list(rows, out) -> None:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(clinician_labels.LIST_COLUMNS)
        writer.writerows((p, f"{s:.6g}", r) for p, s, r in rows)
