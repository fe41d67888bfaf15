"""What the ``pcam-jax`` dispatcher does for every command, in one place: command-line rewriting
(hyphenated flags, ``--config PRESET``), flag parsing with each mistake as one line and status 2,
quiet logs, and the mapping of the project's known errors (`pcam_jax.errors`) to one line on
stderr and an exit status. ``PCAM_JAX_TRACEBACK=1`` or ``--verbosity=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

TRACEBACK_ENV = "PCAM_JAX_TRACEBACK"
# Commands whose config has a default: ``pcam-jax demo --config.stage1.num_epochs=3`` overrides
# the demo's own preset without naming it.
DEFAULT_PRESETS = {"demo": "synthetic"}


def _underscored(arg: str) -> str:
    """``--manual-dir=X`` -> ``--manual_dir=X``: absl flags are spelled with underscores."""
    if not arg.startswith("--") or arg.startswith("--config."):
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


# Commands whose config has a default: ``pcam-jax demo --config.stage1.num_epochs=3`` overrides
# the demo's own preset without naming it.
DEFAULT_PRESETS = {"demo": "synthetic"}


def resolve_config_argv(argv: list[str], default_preset: str | None = None) -> list[str]:
    """Accept hyphenated flag names, and let ``--config synthetic`` name a preset (rewritten to
    the preset's file path). Overrides (``--config.a.b=v``) without ``--config`` apply to
    ``default_preset`` when the command has one."""
    from pcam_jax.configs import PRESETS, config_path

    out, i = [], 0
    argv = [_underscored(a) for a in argv]
    names_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    if default_preset and not names_config and any(a.startswith("--config.") for a in argv):
        argv = ["--config", default_preset] + argv
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


def _want_traceback(argv: list[str] | None = None) -> bool:
    """``PCAM_JAX_TRACEBACK=1``, or ``--verbosity`` / ``-v`` of 1 or more."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    from absl import flags

    if argv is None:
        return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        if name in ("verbosity", "v") and value.lstrip("-").isdigit() and int(value) >= 1:
            return True
    return False


def _quiet_unraisable(hook):
    """After a failed Orbax save (disk full), TensorStore's callbacks still call into the save
    thread's closed event loop; Python reports each as 'Exception ignored': drop those."""
    def quiet(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            hook(unraisable)
    return quiet


def _fail(name: str, message: str, status: int):
    print(f"pcam-jax {name}: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def run_command(name: str, command_main, argv: list[str]):
    """``command_main(argv)`` with the process set up, known errors as one line and a status."""
    from pcam_jax import errors
    from pcam_jax.training import mesh

    quiet_logs()
    if not _want_traceback():
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    try:
        mesh.maybe_initialize_distributed()
        return command_main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside training (train saves instead: pcam_jax.training.guards)
        if _want_traceback():
            raise
        _fail(name, "interrupted (Ctrl-C); nothing of this command was saved", 128 + 2)
    except Exception as error:  # noqa: BLE001 - only the known ones are caught, the rest re-raised
        status = errors.exit_status(error)
        if status is None or _want_traceback():
            raise
        _fail(name, errors.one_line(error), status)


def _config_override_problem(error: BaseException, argv: list[str]) -> str | None:
    """One line for an override naming no config field (ml_collections raises a bare
    ``AttributeError("'nope'")`` or ``KeyError``): the flag, the field and its siblings."""
    import difflib

    from pcam_jax.configs import base

    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    key = text.splitlines()[0].strip("'\" ") if text.strip() else ""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0].split(".")
        if key not in path:
            continue
        section, known = base.get_config(), []
        for part in path:
            known = sorted(section.keys()) if hasattr(section, "keys") else []
            if part not in known:
                break
            section = section[part]
        parent = ".".join(["config"] + path[:path.index(part)])
        close = difflib.get_close_matches(part, known, n=1)
        hint = f"did you mean {parent}.{close[0]}? " if close else ""
        return (f"{arg}: {parent} has no field {part!r}; {hint}its fields: {', '.join(known)} "
                "(all fields and defaults: pcam_jax/configs/base.py)")
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with each mistake (unknown flag or config field, bad value, missing
    config file) as one line and exit status 2 instead of a traceback or absl's status 1."""
    from absl import flags

    name = argv[0].split()[-1]
    # ml_collections defines a flag per overridden field when it parses --config; a second
    # command in the same process (a notebook, the tests) would define them again and fail.
    for stale in [flag for flag in flags.FLAGS if flag.startswith("config.")]:
        delattr(flags.FLAGS, stale)
    # ... and every other flag would keep the value the previous command gave it (absl flags are
    # process-global): back to their defaults first.
    flags.FLAGS.unparse_flags()
    try:
        rest = flags.FLAGS(argv)
        config = flags.FLAGS.config if "config" in flags.FLAGS else None
        if config is not None:
            config.keys()  # a config file that failed to load raises at first use: now, not later
        return rest
    except Exception as error:  # noqa: BLE001 - the flag parser's own and ml_collections' errors
        if _want_traceback(argv):
            raise
        if isinstance(error, (AttributeError, KeyError)):
            message = _config_override_problem(error, argv) or f"unknown config field: {error}"
        elif isinstance(error, flags.Error) and "'config." in str(error) and not any(
                a == "--config" or a.startswith("--config=") for a in argv):
            message = (f"{str(error).splitlines()[0]}: a --config.a.b=value override needs the config "
                       "it overrides; put --config PRESET (synthetic, mura, tiny, base, or a file) before it")
        elif isinstance(error, flags.Error):
            message = f"{str(error).splitlines()[0]}; see `pcam-jax {name} --helpfull`"
        elif isinstance(error, OSError) and "config" in str(error).lower():
            from pcam_jax.configs import PRESETS

            given = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                         argv[argv.index("--config") + 1] if "--config" in argv[:-1] else "?")
            message = (f"--config {given}: no such preset or config file (presets: {', '.join(PRESETS)}, "
                       "or the path of a .py file with get_config())")
        else:
            raise
        _fail(name, message, 2)
