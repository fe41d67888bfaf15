"""Build the TFDS datasets once, before training, with progress and a summary (`pcam-jax prepare`).

`prepare_mura` checks a manual MURA download and builds it; `prepare_synthetic` builds the
synthetic radiographs; `summary` says where each went, its split sizes and anything the
build reported. The command around them is `pcam_jax.cli.prepare`, which then stores the
train split once as uint8 at the config's training size and resize mode
(`pcam_jax.cli.prepare.prepare_uint8_cache`, `pcam_jax.data.uint8_cache`: what
``data.augment_on="device"`` trains from), so the first training run does not build it.
"""

from __future__ import annotations

import os

from pcam_jax import runtime

DATASETS = ("mura", "fracatlas", "synthetic")


def prepare_mura(manual_dir, data_dir, *, model_selection_fraction: float = 0.1,
                 skip_corrupt: bool = False, label_policy: str = "error"):
    """Builds MURA with progress output; returns the builder (see `summary`)."""
    if not manual_dir:
        raise ValueError("--manual_dir is required: the folder that holds MURA-v1.1/.")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"--manual_dir {manual_dir} does not exist or is not a folder.")
    runtime.tensorflow()  # before TFDS touches TensorFlow
    from pcam_jax.data import mura

    print(f"Checking the MURA tree under {manual_dir} ...", flush=True)
    mura.check_tree(manual_dir)
    print(f"Building MURA into {data_dir} (model_selection_fraction={model_selection_fraction}, "
          f"skip_corrupt={skip_corrupt}, label_policy={label_policy}) ...", flush=True)
    return mura.prepare(manual_dir, data_dir, model_selection_fraction=model_selection_fraction,
                        skip_corrupt=skip_corrupt, label_policy=label_policy)


def prepare_fracatlas(manual_dir, data_dir, *, model_selection_fraction: float):
    """Builds FracAtlas with progress output; returns the builder (see `summary`)."""
    if not manual_dir:
        raise ValueError("--manual_dir is required: the FracAtlas folder (images/, dataset.csv, "
                         "Annotations/) or the folder that holds it.")
    runtime.tensorflow()  # before TFDS touches TensorFlow
    from pcam_jax.data import fracatlas

    root = fracatlas.find_root(manual_dir)
    print(f"Building FracAtlas from {root} into {data_dir} (model_selection_fraction="
          f"{model_selection_fraction}) ...", flush=True)
    return fracatlas.prepare(root, data_dir, model_selection_fraction=model_selection_fraction)


def prepare_synthetic(synthetic_config, data_dir):
    """Builds the synthetic radiographs with progress output; returns the builder."""
    from pcam_jax.data import synthetic_builder

    print(f"Building synthetic radiographs into {data_dir} ...", flush=True)
    return synthetic_builder.prepare(synthetic_config, data_dir)


def uint8_summary(cache) -> str:
    """Where the uint8 cache is, what it holds, its size on disk, and whether it was built now."""
    key = cache.meta["key"]
    state = "built now" if cache.built else "already current, kept"
    return (f"uint8 cache ({state}): {cache.directory}\n"
            f"  {key['split']}: {len(cache)} images at {key['image_size']} px, resize {key['resize']}, "
            f"{cache.size_bytes() / 2**20:.1f} MiB (train with --config.data.augment_on=device to read it)")


def summary(builder) -> str:
    """Where the dataset went, its split sizes, and anything the build reported."""
    lines = [f"Prepared {builder.name}/{builder.builder_config.name} {builder.version} in "
             f"{builder.data_dir}", "  split              images"]
    splits = builder.info.splits
    lines += [f"  {name:<18} {splits[name].num_examples:>6}" for name in splits]
    meta = builder.info.metadata or {}
    if "num_patients" in meta:
        patients = meta["num_patients"].items()
        lines.append("  patients: " + ", ".join(f"{split} {n}" for split, n in patients))
    if "num_fractures" in meta:
        lines.append("  fractured: " + ", ".join(f"{split} {n}" for split, n in meta["num_fractures"].items()))
    lines += fracatlas_notes(meta)
    skipped = [p for paths in (meta.get("skipped_corrupt") or {}).values() for p in paths]
    if skipped:
        lines.append(f"  skipped {len(skipped)} unreadable images (skip_corrupt):")
        lines += [f"    {p}" for p in skipped]
    if meta.get("label_disagreements") and meta.get("label_policy") != "folder":
        lines.append(f"  {len(meta['label_disagreements'])} studies took their CSV label over "
                     "their folder (label_policy=trust_csv):")
        lines += [f"    {d['study_id']}" for d in meta["label_disagreements"]]
    return "\n".join(lines)


def fracatlas_notes(meta) -> list[str]:
    """What the FracAtlas build skipped, turned, clipped or found disagreeing (`pcam_jax.data.fracatlas`)."""
    if "skipped_unreadable" not in meta:
        return []
    lines = [f"  skipped {len(meta['skipped_unreadable'])} unreadable images:"]
    lines += [f"    {line}" for line in meta["skipped_unreadable"]]
    disagree = meta["label_disagreements"]
    lines.append(f"  {len(disagree)} images whose folder and dataset.csv 'fractured' disagree (the folder wins)"
                 + "".join(f"\n    {d['path']}: folder {d['folder_label']}, csv {d['csv_fractured']}" for d in disagree))
    lines.append(f"  {len(meta['orientation_fixed'])} images turned upright by their EXIF orientation")
    notes = meta["annotations"]
    lines.append(f"  COCO: {len(notes['clipped'])} annotations clipped to the image edge, "
                 f"{len(notes['skipped'])} skipped, {len(notes['unknown_images'])} naming no image of the copy")
    lines += [f"    skipped: {line}" for line in notes["skipped"]]
    if meta["fractured_without_mask"]:
        lines.append(f"  {len(meta['fractured_without_mask'])} fractured images without a mask")
    return lines
