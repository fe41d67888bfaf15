"""``pcam-jax label --list selected.csv --out labels.json [--workdir RUN] [--host 127.0.0.1 --port 8765]``:
a local page to draw lesion boxes and polygons on the listed images (`pcam_jax.labelling.app`).

With ``--workdir`` the images come from the run's dataset (as the model reads them) and the run's
map (``--method``, default positive_cam) is offered as a suggestion; without it, from files under
``--image_root``. Every change is saved to ``--out`` (COCO JSON, `pcam_jax.labelling.store`), which
``--config.stage3.lesion_labels`` reads; run the command again to resume.
"""

from __future__ import annotations

import pathlib

from pcam_jax.cli import flags


def main(argv):
    from pcam_jax.data import clinician_labels
    from pcam_jax.labelling import app as app_lib, images as images_lib, store as store_lib

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {' '.join(argv[1:])!r} (flags only)")
    if not flags.LIST.value or not flags.OUT.value:
        raise ValueError("--list (the CSV `pcam-jax select` wrote) and --out (the labels .json to write) are required")
    out = pathlib.Path(flags.OUT.value)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: the labels are COCO JSON; name a .json file")
    paths = clinician_labels.read_list(flags.LIST.value)
    run, suggest = None, None
    if flags.WORKDIR.value:
        from pcam_jax.cli.select import load_run

        run = load_run()
        images = images_lib.DatasetImages(run.config, paths, flags.DATA_DIR.value)
        suggest = app_lib.run_suggester(run, _map_method(run))
    elif flags.IMAGE_ROOT.value:
        images = images_lib.FileImages(flags.IMAGE_ROOT.value, paths)
    else:
        raise ValueError("give --workdir RUN (images from the run's dataset, its map as a suggestion) or "
                         "--image_root DIR (the folder the listed paths are relative to)")
    store = store_lib.LabelStore(out, [(p, *images.sizes[p]) for p in paths])
    try:
        progress = store.progress()
        app = app_lib.create_app(store, images, suggest=suggest, method=_map_method(run) if run else None)

        def ready(url):
            print(f"labelling {progress['total']} images ({progress['done']} done) into {out}; open {url} "
                  "(Ctrl-C to stop: every change is already saved)", flush=True)

        app_lib.serve(app, flags.HOST.value, flags.PORT.value, on_ready=ready)
    finally:
        store.close()


def _map_method(run) -> str:
    from pcam_jax.maps import registry

    return registry.get(flags.METHOD.value).name  # an unknown name: the closest one and the list
