"""The ``pcam-jax`` console script: ``pcam-jax COMMAND [flags]``.

One module per command in this package (``pcam_jax/cli/<command>.py``, each a ``main(argv)``),
their flags defined once in `pcam_jax.cli.flags`. Only the command that runs is imported, so
``pcam-jax --help`` starts fast (TensorFlow is imported only by the commands that read data).
What every command gets (flag rewriting and parsing, known errors as one line and an exit
status, quiet logs, `jax.distributed` when the environment asks for it) is `pcam_jax.cli.process`.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "prepare": ("pcam_jax.cli.prepare", "build a TFDS dataset: `prepare synthetic`, `prepare mura --manual-dir DIR` "
                "or `prepare folder --folder-root DIR`"),
    "mura-world": ("pcam_jax.cli.mura_world", "write a MURA-v1.1-shaped tree of synthetic radiographs + COCO "
                   "lesion labels: --out DIR"),
    "train": ("pcam_jax.cli.train", "train stages 1-3: --config CONFIG --workdir DIR [--stages 1,2,3]"),
    "demo": ("pcam_jax.cli.demo", "all three stages on synthetic data, then evaluation [--workdir DIR]"),
    "evaluate": ("pcam_jax.cli.evaluate", "score every map method from a work directory's checkpoints"),
    "maps": ("pcam_jax.cli.maps", "probabilities and overlay maps for your own images (PNG, DICOM, ...): "
             "--workdir DIR --out DIR IMAGE|FOLDER..."),
    "select": ("pcam_jax.cli.select", "list the unlabelled abnormal train images to label first: --workdir DIR --n 100"),
    "label": ("pcam_jax.cli.label", "label lesions in the browser: --list selected.csv --out labels.json [--workdir DIR]"),
}


def _usage() -> str:
    lines = ["usage: pcam-jax COMMAND [flags]   (pcam-jax COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"pcam-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    # TensorFlow's C++ start-up lines ("oneDNN custom operations are on", ...) stay off the console.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pcam_jax import runtime

    runtime.configure()  # before any JAX computation: project XLA flags, compilation cache
    module = importlib.import_module(COMMANDS[command][0])
    from absl import app

    from pcam_jax.cli import process

    app.run(lambda args: process.run_command(command, module.main, args),
            argv=[f"pcam-jax {command}"] + process.resolve_config_argv(argv[2:], process.DEFAULT_PRESETS.get(command)),
            flags_parser=process.parse_flags)
