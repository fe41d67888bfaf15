"""The seeded study's numbers: means and paired differences over seeds with 95 % t-intervals, the tables and the plot.

Pure functions of the per-run rows `pcam_jax.study.summarise` makes (each row: a method /
setting, its label count, ``curve`` = the stage whose decoder curve it is a point of, or None,
and the metrics of `METRICS`, None where not measured):

    aggregated = aggregate(results, runs)       # {shortcut: [row with mean_interval per metric]}
    paired = paired_differences(results)        # {shortcut: [comparison with the interval of its differences]}
    markdown_table(aggregated, paired=paired)   # study.md
    label_efficiency_plot(aggregated, "label_efficiency.png")
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from pcam_jax.training import stages as stages_lib

METRICS = {"kappa": "kappa", "auroc": "AUROC", "lesion_auroc": "lesion AUROC", "pointing_game": "pointing game",
           "pxap": "PxAP", "hardware_effect": "hardware effect", "argmax_hardware": "arg-max on hardware"}
# The range of each metric: an interval is clipped to it (a t-interval over 3-5 seeds of a share near
# 0 or 1 otherwise runs past it), a difference of two to +-(its width).
BOUNDS = {"kappa": (-1.0, 1.0), "auroc": (0.0, 1.0), "lesion_auroc": (0.0, 1.0), "pointing_game": (0.0, 1.0),
          "pxap": (0.0, 1.0), "hardware_effect": (-1.0, 1.0), "argmax_hardware": (0.0, 1.0)}
# Numbers of the classifier rather than of the map: two maps of one run share them, so their
# difference is 0 by construction and is not reported.
CLASSIFIER_METRICS = ("kappa", "auroc", "lesion_auroc", "hardware_effect")
# Paired differences reported per seed (issue 22): (name, (stage, map), (stage, map)); the stage-2 map
# is taken in each mask mode the study ran; stages 3 and 4 are paired at the same label count.
COMPARISONS = (
    ("stage 3 decoder - stage 4 segmenter", (3, "decoder"), (4, "decoder")),
    ("stage 2 attention - stage 1 positive CAM", (2, "positive_cam"), (1, "positive_cam")),
    ("stage 1 positive CAM - stage 1 CAM", (1, "positive_cam"), (1, "cam")),
    ("stage 3 positive CAM - stage 1 positive CAM", (3, "positive_cam"), (1, "positive_cam")),
)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def mean_interval(values: Iterable[float | None], confidence: float = 0.95, bounds: tuple[float, float] | None = None
                  ) -> dict:
    """Mean and t-interval of the finite values: {"mean", "low", "high", "half_width", "clipped", "n", "values"}
    (half_width ``t_{(1+c)/2, n-1} s / sqrt(n)``, sample std s; None with fewer than 2 values). With
    ``bounds`` (the metric's range) the interval is clipped to it and ``clipped`` says whether it was."""
    given = [None if v is None else float(v) for v in values]
    finite = np.asarray([v for v in given if v is not None and math.isfinite(v)], float)
    n = len(finite)
    mean = float(finite.mean()) if n else None
    half = (t_quantile(0.5 + confidence / 2, n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)) if n > 1 else None
    low, high = (None, None) if half is None else (mean - half, mean + half)
    clipped = False
    if bounds is not None and half is not None:
        clipped = low < bounds[0] or high > bounds[1]
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "half_width": half, "clipped": clipped, "n": n, "values": given}


def paired_differences(results: Iterable[dict]) -> dict:
    """{shortcut: [{"comparison", "mode", "labels", "seeds", metric: mean_interval of the per-seed
    differences}]} for each of `COMPARISONS` the finished runs allow. A difference is taken within
    one seed (the same data, labelled subset and stage-1 start), so the seed's own luck cancels."""
    found: dict[tuple, dict] = {}
    for result in results:
        run = result["run"]
        for row in result["rows"]:
            labels = run["labels"] if stages_lib.get(run["stage"]).needs_labelled else None
            found[(run["shortcut"], run["seed"], run["stage"], row["map"], run.get("mode", ""), labels)] = row
    out: dict[str, list[dict]] = {}
    shortcuts = list(dict.fromkeys(key[0] for key in found))
    for shortcut in shortcuts:
        for name, (stage_a, map_a), (stage_b, map_b) in COMPARISONS:
            for key_a in sorted({k[2:] for k in found if k[0] == shortcut and k[2:4] == (stage_a, map_a)},
                                key=lambda k: (k[2], k[3] or 0)):
                _, _, mode, labels = key_a
                spec_b = stages_lib.get(stage_b)   # B in A's mode and at A's label count where B has them
                key_b = (stage_b, map_b, mode if spec_b.uses("l2") else "", labels if spec_b.needs_labelled else None)
                one_run = stage_a == stage_b   # two maps of one classifier
                seeds, diffs = [], {m: [] for m in METRICS}
                for seed in sorted({k[1] for k in found if k[0] == shortcut}):
                    a, b = found.get((shortcut, seed, *key_a)), found.get((shortcut, seed, *key_b))
                    if a is None or b is None:
                        continue
                    seeds.append(seed)
                    for m in METRICS:
                        both = a.get(m) is not None and b.get(m) is not None and not (
                            one_run and m in CLASSIFIER_METRICS)
                        diffs[m].append(a[m] - b[m] if both else None)
                if not seeds:
                    continue
                spans = {m: BOUNDS[m][1] - BOUNDS[m][0] for m in METRICS}
                out.setdefault(shortcut, []).append(
                    {"comparison": name, "mode": mode, "labels": labels, "seeds": seeds,
                     **{m: mean_interval(diffs[m], bounds=(-spans[m], spans[m])) for m in METRICS}})
    return out


def aggregate(results: Iterable[dict], runs: Sequence) -> dict:
    """{shortcut: [{"row", "labels", "curve", "seeds", metric: mean_interval, ...}]} over seeds, in
    grid order. ``results``: {"name", "rows"} per finished run; ``runs``: the grid's `pcam_jax.study.StudyRun`s.

    A labelled stage with a source (stage 3) gets a 0-label row: the run it starts from, whose map
    (stage 2's attention) joins the stage's decoder curve at 0 labels."""
    by_name = {r["name"]: r for r in results}
    zero_of = {source: run.stage for run in runs if stages_lib.get(run.stage).needs_labelled
               for source, _ in run.sources}
    table: dict[str, dict[tuple, list[dict]]] = {s: {} for s in dict.fromkeys(run.shortcut for run in runs)}
    for run in runs:
        for row in by_name.get(run.name, {}).get("rows", []):
            table[run.shortcut].setdefault((row["row"], row["labels"]), []).append(row)
            if run.name in zero_of:
                target = zero_of[run.name]
                zero = dict(row, row=f"{stages_lib.get(target).name}, 0 labels = {row['row']}", labels=0,
                            curve=target, stage=target)
                table[run.shortcut].setdefault((zero["row"], 0), []).append(zero)
    out = {}
    for shortcut, rows in table.items():
        # By stage; a stage's decoder curve first (0 labels = its start, then by labels), then its other maps.
        order = lambda item: (item[1][1][0].get("stage", 0), item[1][1][0].get("curve") is None,
                              item[1][0][1] or 0, item[0])
        ranked = sorted(enumerate(rows.items()), key=order)
        out[shortcut] = [{"row": key[0], "labels": key[1], "stage": found[0].get("stage"), "curve": found[0].get("curve"),
                          "seeds": [r.get("seed") for r in found],
                          **{m: mean_interval([r.get(m) for r in found], bounds=BOUNDS[m]) for m in METRICS}}
                         for _, (key, found) in ranked]
    return out


def format_cell(interval: dict, digits: int = 3) -> str:
    """``0.853 [0.801, 0.905]``; ``0.853 (n=1)``; ``-`` when nothing was measured."""
    if not interval or interval.get("mean") is None:
        return "-"
    if interval.get("half_width") is None:
        return f"{interval['mean']:.{digits}f} (n={interval['n']})"
    mark = "*" if interval.get("clipped") else ""
    return f"{interval['mean']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]{mark}"


def markdown_table(aggregated: dict, title: str = "Seeded study", paired: dict | None = None) -> str:
    """One table per shortcut setting: rows = method / setting, columns = metrics; then the paired
    differences (`paired_differences`), one table per shortcut setting."""
    lines = [f"# {title}", "",
             "Mean [95 % t-interval] over seeds (* : clipped to the metric's range), test split. kappa and AUROC: "
             "classification; lesion AUROC: "
             "counterfactual renders with marker and hardware held equal (pooled); pointing game and PxAP: "
             "localisation of the row's map; hardware effect: mean P(abnormal) with minus without hardware on normal "
             "counterfactual limbs; arg-max on hardware: share of counterfactual limbs whose map peaks on the "
             "hardware. Stage 3 cannot train with 0 labels: its 0-label row is the "
             "stage-2 run it starts from. Stage 4 is not a classifier (its head stays at its random start).", ""]
    for shortcut, rows in aggregated.items():
        lines += [f"## Shortcut {shortcut}" + (" (side marker and hardware never drawn)" if shortcut == "off" else ""),
                  "", "| method / setting | labels | seeds | " + " | ".join(METRICS.values()) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for row in rows:
            n = max(row[m]["n"] for m in METRICS)
            labels = "-" if row["labels"] is None else str(row["labels"])
            lines.append(f"| {row['row']} | {labels} | {n} | " + " | ".join(format_cell(row[m]) for m in METRICS) + " |")
        lines.append("")
    for shortcut, rows in (paired or {}).items():
        lines += [f"## Paired differences, shortcut {shortcut}", "",
                  "A minus B within each seed (same data, labelled subset and stage-1 start), mean [95 % t-interval "
                  "of the differences]; an interval that excludes 0 is a difference these seeds support.", "",
                  "| A - B | stage-2 mode | labels | seeds | " + " | ".join(METRICS.values()) + " |",
                  "|---|---|---|---|" + "---|" * len(METRICS)]
        for row in rows:
            labels = "-" if row["labels"] is None else str(row["labels"])
            lines.append(f"| {row['comparison']} | {row['mode'] or '-'} | {labels} | {len(row['seeds'])} | "
                         + " | ".join(format_cell(row[m]) for m in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def label_efficiency_plot(aggregated: dict, path):
    """Decoder PxAP and pointing game against the number of labels: stage 3 (0 labels: its
    stage-2 start) and the stage-4 segmenter, mean with 95 % interval bars, per shortcut setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"on": ("-", "o", 0.0), "off": ("--", "s", 0.04)}   # line, marker, x nudge (log units)
    counts = set()
    for ax, metric in zip(axes, ("pxap", "pointing_game")):
        for shortcut, rows in aggregated.items():
            line, marker, nudge = styles.get(shortcut, ("-", "o", 0.0))
            curves = list(dict.fromkeys(r["curve"] for r in rows if r.get("curve")))
            for colour, curve in enumerate(curves):
                points = sorted(((r["labels"], r[metric]) for r in rows
                                 if r.get("curve") == curve and r[metric]["mean"] is not None), key=lambda p: p[0])
                if not points:
                    continue
                spec = stages_lib.get(curve)
                label = f"{spec.name} decoder" + ("" if spec.uses("l1") else " (segmenter, labelled only)")
                counts.update(p[0] for p in points)
                ax.errorbar([p[0] * 10 ** nudge + nudge for p in points], [p[1]["mean"] for p in points],
                            yerr=[p[1]["half_width"] or 0.0 for p in points], color=f"C{colour}", linestyle=line,
                            marker=marker, capsize=3, label=f"{label}, shortcut {shortcut}")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xticks(sorted(counts) or [0], [str(c) for c in sorted(counts)] or ["0"])
        ax.set_xlabel("lesion-labelled training images")
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no run with lesion labels", ha="center", transform=axes[0].transAxes)
    fig.text(0.5, 0.01, "0 labels: the run stage 3 starts from (stage 2's attention map); bars: 95 % t-interval",
             ha="center", fontsize=8)
    fig.suptitle("Label efficiency: mean and 95 % interval over seeds")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
