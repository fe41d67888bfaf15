"""The demo's phases: the whole method on synthetic radiographs, on a CPU (``pcam-jax demo``, `pcam_jax.cli.demo`).

Phases, each a function (so one can be swapped or added) and each timed:

1. `prepare_data`: build the synthetic TFDS dataset under ``<workdir>/data`` (once).
2. `train`: stages 1, 2 and 3 (`pcam_jax.training.loop`); re-running resumes/skips.
3. `evaluate`: classification and localisation of every map on the test split, the
   Figure-2 comparison and a report, in ``<workdir>/eval`` (`pcam_jax.evaluation`).
4. `summarize`: per-stage accuracy, where the outputs are, and the wall time of each phase.

The config is the ``synthetic`` preset; ``--config`` (e.g. ``--config tiny`` for a smoke
test) and ``--config.x.y=value`` overrides work as for ``pcam-jax train``.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

from pcam_jax.training import stages as stages_lib

DEFAULT_WORKDIR = "work/demo"


def demo_config(config=None, workdir: str | pathlib.Path = DEFAULT_WORKDIR):
    """The demo's config: the synthetic preset (or ``config``) with its data under ``<workdir>/data``."""
    from pcam_jax import configs

    config = configs.get_config("synthetic") if config is None else config
    with config.unlocked():
        if not config.data.data_dir:
            config.data.data_dir = str(pathlib.Path(workdir).absolute() / "data")
    return config


def prepare_data(config, workdir) -> dict:
    from pcam_jax.data import synthetic_builder

    if config.data.dataset != "synthetic":
        raise ValueError(f"the demo runs on synthetic data; config.data.dataset is {config.data.dataset!r}")
    builder = synthetic_builder.prepare(config.synthetic, config.data.data_dir)
    return {"splits": {name: split.num_examples for name, split in builder.info.splits.items()},
            "data_dir": str(config.data.data_dir)}


def train(config, workdir) -> dict:
    from pcam_jax.training import loop

    return loop.train_and_evaluate(config, workdir, stages_lib.DEFAULT)


def evaluate(config, workdir) -> dict:
    from pcam_jax.evaluation.evaluate import evaluate_workdir

    # Quiet: the summary prints the localisation table and what each stage relies on, once.
    return evaluate_workdir(workdir, data_dir=str(config.data.data_dir), verbose=False)


Phase = tuple[str, Callable[[Any, pathlib.Path], Any]]
PHASES: tuple[Phase, ...] = (("prepare data", prepare_data), ("train", train), ("evaluate", evaluate))


def summarize(workdir: pathlib.Path, outputs: dict[str, Any], seconds: dict[str, float], config=None) -> str:
    """The closing summary: per-stage model-selection and test accuracy, files, what the seeded study
    of this recipe supports (`pcam_jax.study.findings`; with ``config``), phase times."""
    lines = ["", "pcam-jax demo: summary", ""]
    trained = outputs.get("train") or {}
    tested = (outputs.get("evaluate") or {}).get("classification", {})
    if trained:
        lines.append("stage  model-selection accuracy / AUROC   test accuracy / AUROC")
        for stage, result in sorted(trained.items()):
            selection = result.get("eval") or {}
            test = tested.get(f"stage{stage}", {}).get("image", {})
            lines.append(f"  {stage}    {selection.get('accuracy', float('nan')):.3f} / "
                         f"{selection.get('auroc', float('nan')):.3f}"
                         f"                    {test.get('accuracy', float('nan')):.3f} / "
                         f"{test.get('auroc', float('nan')):.3f}")
        lines.append("")
    reliance = (outputs.get("evaluate") or {}).get("shortcuts", {})
    if reliance:
        from pcam_jax.evaluation.shortcuts import reliance_summary

        lines.append("what each stage's classifier relies on (counterfactual renders):")
        lines += [f"  {stage[-1]}    {reliance_summary(r)}" for stage, r in sorted(reliance.items())]
        lines.append("")
    localisation = (outputs.get("evaluate") or {}).get("localisation", {})
    if localisation:
        from pcam_jax.evaluation.report import localisation_table

        lines += ["localisation on the test split:", localisation_table(localisation), ""]
    figures = (outputs.get("evaluate") or {}).get("figures", {})
    if figures:
        lines.append(f"maps and report: {workdir / 'eval'} ({', '.join(sorted(figures.values()))}, report.md)")
    lines.append(f"training logs: {workdir / 'metrics.jsonl'}, TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
    lines.append("these are one seed's numbers (config.seed); seed means with paired 95 % intervals: "
                 "docs/RESULTS.md, sections 5 and 8")
    if config is not None:
        from pcam_jax.study import findings

        lines += findings.supported_lines(config)
    lines.append("")
    lines.append("wall time per phase:")
    for name, value in seconds.items():
        lines.append(f"  {name:<14} {value:7.1f} s")
    lines.append(f"  {'total':<14} {sum(seconds.values()):7.1f} s")
    return "\n".join(lines)


def run_demo(workdir=DEFAULT_WORKDIR, config=None, phases: tuple[Phase, ...] = PHASES) -> dict:
    """Run ``phases`` in order; returns {"outputs": {phase: result}, "seconds": {phase: s}}."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = demo_config(config, workdir)
    outputs, seconds = {}, {}
    for name, phase in phases:
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        outputs[name] = phase(config, workdir)
        seconds[name] = time.perf_counter() - started
    print(summarize(workdir, outputs, seconds, config), flush=True)
    return {"outputs": outputs, "seconds": seconds}
