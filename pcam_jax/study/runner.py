"""The seeded study of issue 10: every method, several seeds, the shortcut on and off, one command.

    python experiments/study.py --preset small --seeds 0,1,2 --workdir work/study

`grid` lists the runs; each is one work directory ``<workdir>/seed{S}-shortcut_{on|off}/NAME``:

    stage1                 stage 1: CAM and positive CAM
    stage2-keep, -erase    stage 2 in each mask mode, from the group's stage 1 (copied in) when
                           config.stage2.init_from = "stage1" (the demo preset), else from scratch
    stage3-keep-n10 ...    stage 3 with N lesion-labelled images (config.synthetic.num_labelled),
                           starting from the group's stage2-keep checkpoint (copied in)
    stage4-n10 ...         the fair baseline (Choe et al.): a segmenter trained on the N labelled
                           images alone, from scratch (stage 4 of `pcam_jax.training.stages`)

Stage 3 cannot train with 0 labels (it draws a labelled batch every step), so its 0-label point
is the stage-2 result it starts from (said so in the table and the plot). "Shortcut off" sets
every ``config.synthetic.marker_prob_*`` and ``hardware_prob_*`` to 0. A seed sets ``config.seed``
and, unless ``vary_data=False``, ``config.synthetic.seed`` (a new dataset and labelled subset).

`run_study` trains and scores the runs in order, skipping every run whose ``study_run.json`` is
written (re-running the command resumes; a run cut short resumes from its checkpoints), and
prints ``run k/K: NAME ... done in Xs; ETA Ys`` (ETA: mean time of finished runs of the same stage).
It writes ``study.json`` (every run's numbers and the aggregates), ``study.md`` (mean and 95 %
t-interval over seeds per method and metric) and ``label_efficiency.png``.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pcam_jax.maps import registry
from pcam_jax.study.tables import aggregate, label_efficiency_plot, markdown_table, paired_differences
from pcam_jax.training import stages as stages_lib

RESULT = "study_run.json"   # in each run's directory, written last: the run is finished
SHORTCUT_FIELDS = ("marker_prob_abnormal", "marker_prob_normal", "hardware_prob_abnormal", "hardware_prob_normal")
SHORTCUTS = ("on", "off")
# The maps each stage's runs are scored on: the paper's own among the stage's (no Score-CAM & co.).
SCORED = {n: tuple(m for m in s.map_methods if registry.get(m).in_paper) for n, s in stages_lib.STAGES.items()}
PRESETS = ("small", "demo", "tiny")


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One run of the grid: a stage trained in its own work directory."""

    seed: int
    shortcut: str                 # "on" | "off"
    stage: int
    labels: int                   # config.synthetic.num_labelled
    mode: str = ""                # config.stage2.mask_mode ("" where the stage has no L2)
    sources: tuple[tuple[str, int], ...] = ()   # (run name, stage): checkpoints copied in first

    @property
    def group(self) -> str:
        return f"seed{self.seed}-shortcut_{self.shortcut}"

    @property
    def short_name(self) -> str:
        spec = stages_lib.get(self.stage)
        return "-".join([spec.name] + ([self.mode] if self.mode else [])
                        + ([f"n{self.labels}"] if spec.needs_labelled else []))

    @property
    def name(self) -> str:
        return f"{self.group}/{self.short_name}"

    @property
    def kind(self) -> str:
        return stages_lib.get(self.stage).name


def grid(seeds: Iterable[int], *, shortcuts: Sequence[str] = SHORTCUTS, modes: Sequence[str] = ("keep", "erase"),
         labels: Sequence[int] = (0, 10, 30, 100), stage3_mode: str = "keep",
         sources: dict[int, int | None] | None = None) -> list[StudyRun]:
    """The runs, seed by seed, each run after the runs it copies checkpoints from.

    ``sources``: {stage: the stage it starts from} (`stage_sources` of the config); default the
    base config's (stage 2 from scratch, stage 3 from stage 2, stage 4 from scratch).
    """
    sources = {2: None, 3: 2, 4: None} if sources is None else sources
    if stage3_mode not in modes:
        raise ValueError(f"stage 3 starts from stage 2 in mode {stage3_mode!r}: it must be one of modes {tuple(modes)}")
    bad = [s for s in shortcuts if s not in SHORTCUTS]
    if bad or not shortcuts:
        raise ValueError(f"shortcut settings must be among {SHORTCUTS}, got {tuple(shortcuts)}")
    positive = sorted({int(n) for n in labels if int(n) > 0})
    if any(int(n) < 0 for n in labels):
        raise ValueError(f"label counts must be >= 0, got {tuple(labels)}")
    data_labels = max(positive, default=0)   # stages 1 and 2 share the N=max dataset (same images)
    runs = []
    for seed in seeds:
        for shortcut in shortcuts:
            made: dict[tuple[int, str], StudyRun] = {}

            def add(stage: int, n: int, mode: str = "") -> None:
                source = sources.get(stage)   # the group's run of that stage (in this mode, if it has one)
                copied = () if source is None else (((made.get((source, mode)) or made[(source, "")]).name, source),)
                run = StudyRun(int(seed), shortcut, stage, n, mode, copied)
                made.setdefault((stage, mode), run)
                runs.append(run)

            add(1, data_labels)
            for mode in modes:
                add(2, data_labels, mode)
            for n in positive:
                add(3, n, stage3_mode)
            for n in positive:
                add(4, n)
    return runs


def stage_sources(config) -> dict[int, int | None]:
    """{stage: the stage whose checkpoint it starts from} under ``config``."""
    return {n: stages_lib.get(n).source(config) for n in stages_lib.NUMBERS}


# --- configs ---------------------------------------------------------------------------------

def study_config(preset: str = "small", lesion_level: str = "clear"):
    """The base config of a study: ``demo`` is the synthetic preset (the demo), ``small`` a cheaper
    version of it (the whole default grid in 25-35 minutes on 2 shared CPU cores, measured), ``tiny``
    the tests' preset. Faithfulness, Figure 2 and TensorBoard images are off (not scored)."""
    from pcam_jax import configs

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    config = configs.get_config("tiny" if preset == "tiny" else "synthetic")
    with config.unlocked():
        if preset == "small":   # the demo's 128 px images and network; fewer images and steps
            config.synthetic.num_train = 640
            config.synthetic.num_model_selection = 160
            config.synthetic.num_test = 160
            config.synthetic.num_heldout_labelled = 32
            config.stage1.num_epochs = 5      # 200 steps: the cheapest stage, the one the maps start from
            config.stage2.num_epochs = 2
            config.stage3.num_epochs = 2
            config.stage4.num_epochs = 2
            config.eval.shortcut_limbs = 40
        config.synthetic.lesion_level = lesion_level
        config.eval.trust_images = 0
        config.eval.num_figure_images = 0
        config.train.image_summary_every_steps = 0
    return config


def apply_overrides(config, overrides: Iterable[str]):
    """``["data.batch_size=32", "stage2.init_from=stage1"]`` applied to ``config`` (in place, and
    returned); each value is read as the field's current type (bools: true/false/1/0)."""
    with config.unlocked():
        for item in overrides:
            key, eq, text = item.partition("=")
            key = key.removeprefix("--").removeprefix("config.")
            *parents, field = key.split(".")
            section = config
            for part in parents:
                section = section[part] if part in section else None
                if section is None:
                    break
            if not eq or section is None or not hasattr(section, "keys") or field not in section:
                raise ValueError(f"override {item!r}: expected FIELD=VALUE with FIELD a config field "
                                 "such as data.batch_size (all fields: pcam_jax/configs/base.py)")
            old = section[field]
            if isinstance(old, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"override {item!r}: {key} is true or false")
                value = text.lower() in ("true", "1")
            elif isinstance(old, (int, float, tuple, list)):
                value = type(old)(ast.literal_eval(text))
            else:
                value = text
            section[field] = value
    return config


def run_config(base, run: StudyRun, data_dir, *, vary_data: bool = True):
    """``base`` for one run: its seed, shortcut setting, mask mode, label count and data dir."""
    config = base.copy_and_resolve_references()
    with config.unlocked():
        config.seed = run.seed
        if vary_data:
            config.synthetic.seed = run.seed
        if run.shortcut == "off":
            for field in SHORTCUT_FIELDS:
                config.synthetic[field] = 0.0
        if run.mode:
            config.stage2.mask_mode = run.mode
        config.synthetic.num_labelled = int(run.labels)
        config.data.data_dir = str(pathlib.Path(data_dir).absolute())
        if not stages_lib.get(run.stage).uses("l1"):   # no classifier (stage 4): no counterfactual renders
            config.eval.shortcut_limbs = 0
    return config


# --- one run ---------------------------------------------------------------------------------

def train_and_score(run: StudyRun, config, run_dir: pathlib.Path, *, should_stop=None) -> dict:
    """Train the run's stage in ``run_dir`` (resuming), then score it on the test split."""
    from pcam_jax.evaluation.evaluate import evaluate_workdir
    from pcam_jax.training import loop, reporting

    reporter = reporting.Reporter(run_dir, tensorboard=False)
    try:
        loop.train_and_evaluate(config, run_dir, (run.stage,), reporter=reporter, should_stop=should_stop)
    finally:
        reporter.close()
    # "best": the segmenter's (stage 4) is chosen by the loop on held-out decoder PxAP (`Stage.best_by_localisation`)
    return evaluate_workdir(run_dir, stages=(run.stage,), methods={run.stage: SCORED[run.stage]}, verbose=False)


def copy_stage(source_dir: pathlib.Path, run_dir: pathlib.Path, stage: int) -> None:
    """``source_dir``'s stage checkpoints into ``run_dir`` (whole, atomically; once)."""
    from pcam_jax.training import checkpointing

    target = checkpointing.stage_directory(run_dir, stage)
    if target.is_dir():
        return
    source = checkpointing.stage_directory(source_dir, stage)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} holds no stage {stage} checkpoint: its run must finish first")
    partial = target.with_name(target.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    os.replace(partial, target)


def _value(tree: Any, *path) -> float | None:
    """``tree[path[0]][path[1]]...`` as a float; None where absent or not finite (JSON-safe)."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    number = isinstance(tree, (int, float, np.number)) and not isinstance(tree, bool)
    return float(tree) if number and np.isfinite(tree) else None


def row_label(stage: int, method: str, mode: str) -> str:
    spec = stages_lib.get(stage)
    what = "attention (positive CAM)" if spec.uses("l2") and not spec.needs_labelled else registry.title(method)
    setting = (f" ({mode})" if spec.uses("l2") else "") + (" segmenter, labelled only" if not spec.uses("l1") else "")
    return f"{spec.name}{setting}: {what}"


def summarise(run: StudyRun, metrics: dict) -> list[dict]:
    """One row per scored map of the run: its localisation and (for classifiers) classification."""
    spec = stages_lib.get(run.stage)
    classifier = spec.uses("l1")   # stage 4's head is frozen at its random start: not a classifier
    rows = []
    for method in SCORED[run.stage]:
        row = {"row": row_label(run.stage, method, run.mode), "labels": run.labels if spec.needs_labelled else None,
               "stage": run.stage, "map": method, "curve": run.stage if registry.get(method).needs_decoder else None,
               "kappa": _value(metrics, "classification", spec.name, "image", "cohen_kappa") if classifier else None,
               "auroc": _value(metrics, "classification", spec.name, "image", "auroc") if classifier else None,
               "lesion_auroc": _value(metrics, "shortcuts", spec.name, "lesion_auroc", "pooled") if classifier else None,
               # issue 22's shortcut targets: P(abnormal) with - without hardware on normal counterfactual
               # limbs, and how often the row's map peaks on the hardware (every cell pooled)
               "hardware_effect": (_value(metrics, "shortcuts", spec.name, "hardware", "effect_normal")
                                   if classifier else None),
               "argmax_hardware": _value(metrics, "shortcuts", spec.name, "argmax", method, "all", "hardware")}
        for metric in ("pointing_game", "pxap"):
            row[metric] = _value(metrics, "localisation", f"{spec.name}/{method}", metric)
        rows.append(row)
    return rows


# --- the study ---------------------------------------------------------------------------------

def _eta(remaining: Sequence[StudyRun], seconds: dict[str, list[float]]) -> str:
    every = [s for values in seconds.values() for s in values]
    if not remaining:
        return "0s"
    if not every:
        return "?"
    total = sum(np.mean(seconds[r.kind]) if seconds.get(r.kind) else np.mean(every) for r in remaining)
    return f"{total:.0f}s ({total / 60:.1f} min)"


def run_study(runs: Sequence[StudyRun], base_config, workdir, *, runner: Callable = train_and_score,
              vary_data: bool = True, log: Callable[[str], None] = print,
              should_stop=None, settings: dict | None = None) -> dict:
    """Train and score every run not finished yet, then write study.json, study.md and the plot.

    ``runner(run, config, run_dir[, should_stop=...]) -> evaluation metrics`` (`train_and_score`;
    tests pass a fake). A stop request between two runs returns ``{"stopped": True, ...}``; one
    during training raises `pcam_jax.errors.Interrupted` from the loop (the run resumes)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    results = []
    for k, run in enumerate(runs, 1):
        run_dir = workdir / run.name
        done_file = run_dir / RESULT
        prefix = f"run {k}/{len(runs)}: {run.name}"
        if done_file.is_file():
            result = json.loads(done_file.read_text())
            seconds[run.kind].append(float(result["seconds"]))
            results.append(result)
            log(f"{prefix} ... finished before ({result['seconds']:.0f}s), skipped")
            continue
        if should_stop is not None and should_stop():
            log(f"stop requested: stopped before {prefix}; re-run the same command to resume")
            return {"stopped": True, "runs": results}
        log(f"{prefix} ...")
        started = time.perf_counter()
        run_dir.mkdir(parents=True, exist_ok=True)
        for source, stage in run.sources:
            copy_stage(workdir / source, run_dir, stage)
        config = run_config(base_config, run, workdir / "data", vary_data=vary_data)
        kwargs = {"should_stop": should_stop} if should_stop is not None else {}
        metrics = runner(run, config, run_dir, **kwargs)
        took = time.perf_counter() - started
        rows = [dict(row, seed=run.seed) for row in summarise(run, metrics)]
        result = {"name": run.name, "run": dataclasses.asdict(run), "rows": rows, "seconds": took}
        partial = done_file.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=2))
        os.replace(partial, done_file)
        seconds[run.kind].append(took)
        results.append(result)
        log(f"{prefix} ... done in {took:.0f}s; ETA {_eta(runs[k:], seconds)}")
    aggregated, paired = aggregate(results, runs), paired_differences(results)
    study = {"stopped": False, "settings": settings or {}, "runs": results, "aggregate": aggregated,
             "paired": paired, "seconds": sum(float(r["seconds"]) for r in results)}
    (workdir / "study.json").write_text(json.dumps(study, indent=2))
    (workdir / "study.md").write_text(markdown_table(aggregated, paired=paired))
    label_efficiency_plot(aggregated, workdir / "label_efficiency.png")
    log(f"wrote {workdir / 'study.json'}, {workdir / 'study.md'} and {workdir / 'label_efficiency.png'}")
    return study
