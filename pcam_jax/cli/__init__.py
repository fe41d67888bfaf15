"""The ``pcam-jax`` console script: ``pcam-jax COMMAND [flags]``.

One module per command in this package (``pcam_jax/cli/<command>.py``, each a ``main(argv)``),
their flags defined once in `pcam_jax.cli.flags`. Only the command that runs is imported, so
``pcam-jax --help`` starts fast (TensorFlow is imported only by the commands that read data).
The dispatcher does, for every command and in one place: the process setup
(`pcam_jax.runtime.configure`, `jax.distributed` when the environment asks for it, quiet
absl logs), and the mapping of the project's known errors (`pcam_jax.errors`) to one line
on stderr and an exit status. ``PCAM_JAX_TRACEBACK=1`` shows the traceback instead.
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
}
TRACEBACK_ENV = "PCAM_JAX_TRACEBACK"


def _usage() -> str:
    lines = ["usage: pcam-jax COMMAND [flags]   (pcam-jax COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def _underscored(arg: str) -> str:
    """``--manual-dir=X`` -> ``--manual_dir=X``: absl flags are spelled with underscores."""
    if not arg.startswith("--") or arg.startswith("--config."):
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


def resolve_config_argv(argv: list[str]) -> list[str]:
    """Accept hyphenated flag names, and let ``--config synthetic`` name a preset (rewritten to
    the preset's file path)."""
    from pcam_jax.configs import PRESETS, config_path

    out, i = [], 0
    argv = [_underscored(a) for a in argv]
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += ["--config", _resolve(argv[i + 1], PRESETS, config_path)]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + _resolve(arg.split("=", 1)[1], PRESETS, config_path)
        out.append(arg)
        i += 1
    return out


def _resolve(value, presets, config_path):
    name, _, rest = value.partition(":")
    if name in presets:
        return str(config_path(name)) + (":" + rest if rest else "")
    return value


def quiet_logs() -> None:
    """absl INFO logs (Orbax writes several per checkpoint, TFDS per dataset) would bury the
    progress bar: show warnings and errors only, unless ``--verbosity`` was given."""
    from absl import flags, logging

    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run_command(name: str, command_main, argv: list[str]):
    """``command_main(argv)`` with the process set up, known errors as one line and a status."""
    from pcam_jax import errors
    from pcam_jax.training import mesh

    quiet_logs()
    try:
        mesh.maybe_initialize_distributed()
        return command_main(argv)
    except Exception as error:  # noqa: BLE001 - only the known ones are caught, the rest re-raised
        status = errors.exit_status(error)
        if status is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"pcam-jax {name}: {error}", file=sys.stderr, flush=True)
        sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"pcam-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    from pcam_jax import runtime

    runtime.configure()  # before any JAX computation: project XLA flags, compilation cache
    module = importlib.import_module(COMMANDS[command][0])
    from absl import app

    app.run(lambda args: run_command(command, module.main, args),
            argv=[f"pcam-jax {command}"] + resolve_config_argv(argv[2:]))
