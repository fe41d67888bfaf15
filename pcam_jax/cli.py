"""The ``pcam-jax`` console script: ``pcam-jax COMMAND [flags]``.

Each command lives in its own module with absl flags and a ``main(argv)``; only that
module is imported, so ``pcam-jax --help`` and light commands start fast (TensorFlow is
imported only by the commands that read data).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "prepare": ("pcam_jax.data.prepare", "build a TFDS dataset: `prepare synthetic` or `prepare mura --manual-dir DIR`"),
    "train": ("pcam_jax.training.cli", "train stages 1-3: --config CONFIG --workdir DIR [--stages 1,2,3]"),
    "demo": ("pcam_jax.demo", "all three stages on synthetic data, then evaluation [--workdir DIR]"),
    "evaluate": ("pcam_jax.evaluation.cli", "score every map method from a work directory's checkpoints"),
    "maps": ("pcam_jax.analysis_cli", "overlay maps on your own images: --workdir DIR --out DIR IMAGE..."),
}


def _usage() -> str:
    lines = ["usage: pcam-jax COMMAND [flags]   (pcam-jax COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
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

    app.run(module.main, argv=[f"pcam-jax {command}"] + resolve_config_argv(argv[2:]))


if __name__ == "__main__":
    main()
