"""``pcam-jax mura-world --out DIR [--size tiny]``: a MURA-v1.1-shaped tree of synthetic radiographs
and two COCO files of lesion outlines (`pcam_jax.data.mura_world`), to try the real-data path
(prepare mura -> train with clinician labels -> evaluate) without the MURA download."""

from __future__ import annotations

from pcam_jax.cli import flags

SIZES = {
    "default": dict(train_patients_per_part=12, valid_patients_per_part=4, sides=(96, 160),
                    num_labelled_train=100, num_labelled_valid=60),
    "tiny": dict(train_patients_per_part=3, valid_patients_per_part=2, sides=(40, 64),
                 num_labelled_train=12, num_labelled_valid=10),
}


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if not flags.OUT.value:
        raise ValueError("--out is required: an empty folder for MURA-v1.1/ and the label files")
    from pcam_jax.data import mura_world

    world = mura_world.write_mura_world(flags.OUT.value, **SIZES[flags.SIZE.value])
    print(f"Wrote {world['images']['train']} train and {world['images']['valid']} valid images under "
          f"{world['manual_dir']}/MURA-v1.1, and lesion outlines of {world['labelled']['train']} train "
          f"images ({world['train_labels']}) and {world['labelled']['valid']} valid images "
          f"({world['valid_labels']}). Next:\n"
          f"  pcam-jax prepare mura --manual_dir {world['manual_dir']} --data_dir DATA\n"
          f"  pcam-jax train --config mura --workdir RUN --data_dir DATA "
          f"--config.stage3.lesion_labels={world['train_labels']} "
          f"--config.eval.lesion_labels={world['valid_labels']}\n"
          f"  pcam-jax evaluate --workdir RUN", flush=True)
