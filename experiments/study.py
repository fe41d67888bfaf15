"""The seeded study of issue 10, one command (the work is `pcam_jax.study`):

    python experiments/study.py                          # --preset small: 3 seeds x shortcut on/off
    python experiments/study.py --preset demo --seeds 0,1,2,3,4 --workdir work/study_demo
    python experiments/study.py --lesion-level subtle --config.stage2.init_from=stage1
    python experiments/study.py --dry-run                # list the runs and what each copies
    python experiments/study.py --preset demo --workdir work/study_demo --export-findings
                                                         # keep its paired differences for the demo's summary

CAM and positive CAM (stage 1), stage 2 keep / erase, stage 3 with 0 / 10 / 30 / 100 labels
(0: the stage-2 run it starts from), the few-label segmenter (stage 4) with 10 / 30 / 100, with
the synthetic shortcuts (side marker, hardware) on and off, for each seed. Each run is a work
directory under --workdir; a finished one is skipped, so re-running the command resumes (Ctrl-C
or SIGTERM saves the run in flight: exit 3). Writes <workdir>/study.json, study.md (mean and 95 %
t-interval over seeds) and label_efficiency.png.

Config fields are overridden with --config.a.b=value or --set a.b=value (pcam_jax/configs/base.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=("small", "demo", "tiny"),
                        help="small: the whole grid in 25-35 min on 2 CPU cores; demo: the synthetic preset (hours); tiny: tests")
    parser.add_argument("--workdir", default="work/study")
    parser.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    parser.add_argument("--shortcut", type=_names, default=("on", "off"), help="on,off | on | off")
    parser.add_argument("--modes", type=_names, default=("keep", "erase"), help="stage-2 mask modes")
    parser.add_argument("--labels", type=_ints, default=(0, 10, 30, 100), help="lesion labels for stages 3 and 4")
    parser.add_argument("--stage3-mode", default="keep", help="the stage-2 mode stage 3 starts from")
    parser.add_argument("--lesion-level", default="clear", choices=("clear", "subtle"))
    parser.add_argument("--fixed-data", action="store_true",
                        help="one dataset for all seeds (config.synthetic.seed as set); default: a seed sets it too")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--export-findings", nargs="?", const="package", default=None, metavar="PATH",
                        help="write the finished study's paired differences and recipe to PATH (default: "
                             "pcam_jax/study/demo_findings.json, which `pcam-jax demo` prints from) and exit")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    args.overrides = [a[len("--config."):] for a in rest] + list(args.set)
    return args


def study(args) -> int:
    """The study of ``args``; its exit status (0 done, 3 stopped and resumable)."""
    from pcam_jax import errors, study as study_lib
    from pcam_jax.training import guards, losses

    config = study_lib.apply_overrides(study_lib.study_config(args.preset, args.lesion_level), args.overrides)
    for mode in args.modes:
        losses.check_mask_mode(mode)
    runs = study_lib.grid(args.seeds, shortcuts=args.shortcut, modes=args.modes, labels=args.labels,
                          stage3_mode=args.stage3_mode, sources=study_lib.stage_sources(config))
    if args.dry_run:
        for k, run in enumerate(runs, 1):
            copies = ", ".join(f"stage {stage} of {name}" for name, stage in run.sources)
            print(f"run {k}/{len(runs)}: {run.name}" + (f"  (copies {copies})" if copies else ""))
        return 0
    workdir = pathlib.Path(args.workdir)
    if args.export_findings:
        return export_findings(workdir, config, args.export_findings)
    base = {"config": json.loads(config.to_json_best_effort()), "vary_data": not args.fixed_data,
            "stage3_mode": args.stage3_mode}
    saved = workdir / "study_settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != base:
        raise ValueError(f"{workdir} holds a study made with another config ({saved}): use a new --workdir "
                         "(seeds, shortcut settings, modes and label counts may change, the config may not)")
    workdir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(base, indent=2))
    with guards.StopOnSignals() as stop:
        result = study_lib.run_study(runs, config, workdir, vary_data=not args.fixed_data, should_stop=stop,
                                     settings=dict(vars(args), **base))
    return errors.EXIT_INTERRUPTED if result["stopped"] else 0


def export_findings(workdir: pathlib.Path, config, target: str) -> int:
    """``workdir``'s finished study.json, with ``config``'s recipe, as the demo's findings file."""
    from pcam_jax.study import findings

    study_file = workdir / "study.json"
    if not study_file.is_file():
        raise FileNotFoundError(f"{study_file} does not exist: run the study first (same command without "
                                "--export-findings)")
    study = json.loads(study_file.read_text())
    if study.get("stopped", True):
        raise ValueError(f"{study_file} is from a study that stopped early: finish it first")
    out = findings.FINDINGS_FILE if target == "package" else pathlib.Path(target)
    kept = findings.export(study, findings.recipe(config), source=f"experiments/study.py --workdir {workdir}")
    out.write_text(json.dumps(kept, indent=1) + "\n")
    print(f"wrote {out}: {kept['runs']} runs, seeds {kept['seeds']}")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from pcam_jax import runtime

    runtime.configure()   # before JAX starts: the project's XLA flags, the compilation cache
    from pcam_jax import errors

    try:
        return study(args)
    except Exception as error:  # noqa: BLE001 - the project's known errors as one line and a status
        status = errors.exit_status(error)
        if status is None:
            raise
        print(f"study: {errors.one_line(error)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
