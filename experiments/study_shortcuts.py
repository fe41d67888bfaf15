"""What each stage of a seeded study relies on, over seeds (issue 22, item 3):

    python experiments/study_shortcuts.py --workdir work/study_demo [--labels 100] [--out shortcuts.md]

Reads each shortcut-on classifier run's ``eval/metrics.json`` (the counterfactual renders of
`pcam_jax.evaluation.shortcuts`, written by the study's scoring) and prints, per stage and map,
the mean [95 % t-interval] over seeds of: the hardware and marker effects on normal limbs (mean
P(abnormal) with minus without), the lesion AUROC with confounders held equal, and where the
map's arg-max falls: on the hardware over all limbs (the issue's measure), on the hardware on
lesion-free limbs that carry it (where the map has no lesion to point at), on the hardware and on
the lesion on limbs with both. Nothing is trained or scored here.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

CELLS_WITH_HARDWARE = {"lesion-free": ("lesion=0,marker=0,hardware=1", "lesion=0,marker=1,hardware=1"),
                       "with lesion": ("lesion=1,marker=0,hardware=1", "lesion=1,marker=1,hardware=1")}


def run_numbers(shortcuts: dict) -> dict[str, float]:
    """One stage's shortcut report -> the numbers of the table (maps' arg-max shares per map)."""
    out = {"hardware effect (normal)": shortcuts["hardware"]["effect_normal"],
           "marker effect (normal)": shortcuts["marker"]["effect_normal"],
           "lesion AUROC": shortcuts["lesion_auroc"]["pooled"]}
    for method, argmax in shortcuts.get("argmax", {}).items():
        cells = argmax["per_cell"]
        out[f"{method}: on hardware, all limbs"] = argmax["all"]["hardware"]
        for name, keys in CELLS_WITH_HARDWARE.items():
            out[f"{method}: on hardware, {name}"] = sum(cells[k]["hardware"] for k in keys) / len(keys)
        out[f"{method}: on lesion, with lesion and hardware"] = (
            sum(cells[k]["lesion"] for k in CELLS_WITH_HARDWARE["with lesion"]) / 2)
    return out


def collect(workdir: pathlib.Path, labels: int, modes=("keep",)) -> dict[str, dict[str, list[float]]]:
    """{stage row: {number: [value per seed]}} over the study's shortcut-on classifier runs (stage 2
    and 3 in the mask ``modes`` only)."""
    table: dict[str, dict[str, list[float]]] = {}
    for result_file in sorted(workdir.glob("seed*-shortcut_on/*/study_run.json")):
        run = json.loads(result_file.read_text())["run"]
        if run["stage"] == 4 or (run["stage"] == 3 and run["labels"] != labels):
            continue
        if run["stage"] in (2, 3) and run.get("mode") not in modes:
            continue
        metrics_file = result_file.parent / "eval" / "metrics.json"
        shortcuts = json.loads(metrics_file.read_text()).get("shortcuts", {}).get(f"stage{run['stage']}")
        if not shortcuts:
            continue
        row = f"stage {run['stage']}" + (f" ({run['mode']})" if run.get("mode") else "") + (
            f", {labels} labels" if run["stage"] == 3 else "")
        for name, value in run_numbers(shortcuts).items():
            table.setdefault(row, {}).setdefault(name, []).append(value)
    return table


def markdown(table: dict[str, dict[str, list[float]]]) -> str:
    from pcam_jax.study.tables import format_cell, mean_interval

    lines = ["| stage | number | seeds | mean [95 % t-interval] |", "|---|---|---|---|"]
    for row, numbers in table.items():
        for name, values in numbers.items():
            bounds = (-1.0, 1.0) if "effect" in name else (0.0, 1.0)
            lines.append(f"| {row} | {name} | {len(values)} | {format_cell(mean_interval(values, bounds=bounds))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--labels", type=int, default=100, help="the stage-3 label count to report")
    parser.add_argument("--modes", default="keep", help="stage-2 mask modes to report, comma-separated")
    parser.add_argument("--out", type=pathlib.Path, help="also write the table here")
    args = parser.parse_args(argv)
    table = collect(args.workdir, args.labels, tuple(args.modes.split(",")))
    if not table:
        print(f"{args.workdir}: no finished shortcut-on classifier run with eval/metrics.json "
              "(run experiments/study.py first)", file=sys.stderr)
        return 2
    text = markdown(table)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
