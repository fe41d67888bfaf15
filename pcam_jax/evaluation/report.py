"""The Markdown evaluation report: localisation table, classification table, what the figures show.

The metrics dict `write_report` reads (the same dict `pcam-jax evaluate` writes to metrics.json)::

    {
      "localisation": {method: localisation.localisation_metrics(...)},          # optional
      "classification": {model: {"image": classification_metrics(...),          # optional
                                 "study": study_metrics(...),                     # optional
                                 "per_group": {group: metrics}}},                 # optional
      "figures": {"figure2": "figure2.png", "pr_curves": "pr_curves.png",
                  "confusion_matrix": "confusion_matrix.png"},                    # optional
      "split": "test", "checkpoint_steps": {stage: step}, ...                     # optional, shown
      "checkpoint_selection": {stage: "auroc (max) on model_selection"},          # optional, shown
    }

Other keys (config, ...) are ignored here. NaN and None print as "n/a".
"""

from __future__ import annotations

import math
import numbers
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from pcam_jax.evaluation import by_body_part

# (key, header, direction) of the localisation table; all higher-is-better.
LOCALISATION_COLUMNS = (
    ("pointing_game", "Pointing game", "max"),
    ("energy_pointing_game", "Energy PG", "max"),
    ("iou", "IoU@tau", "max"),
    ("dice", "Dice@tau", "max"),
    ("pxap", "PxAP", "max"),
    ("maxboxacc_v2", "MaxBoxAccV2", "max"),
)
CLASSIFICATION_COLUMNS = (
    ("accuracy", "Accuracy"),
    ("auroc", "AUROC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("cohen_kappa", "Cohen's kappa"),
    ("n", "n"),
)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_value(value: Any, digits: int) -> str:
    if _is_missing(value):
        return "n/a"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def format_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str],
                 best: Mapping[str, str] | None = None, *, headers: Mapping[str, str] | None = None,
                 row_header: str = "method", digits: int = 3) -> str:
    """A Markdown table, rows x columns, with the best value of each column in bold.

    Args:
      rows: {row name: {column key: value}}, in display order; a missing key prints "n/a".
      columns: column keys in display order.
      best: {column key: "max" or "min"}: which direction is better; other columns unmarked.
        Ties are all bold; NaN/None never win. Comparison uses the rounded, displayed values
        so that two cells that read the same are marked the same.
      headers: optional {column key: header text}.
      row_header: header of the first column.
      digits: decimals for floats.
    """
    best = dict(best or {})
    headers = dict(headers or {})
    for key, direction in best.items():
        if direction not in ("max", "min"):
            raise ValueError(f"best[{key!r}] must be 'max' or 'min', got {direction!r}.")
    winners: dict[str, set[str]] = {}
    for key, direction in best.items():
        values = {name: round(float(row[key]), digits) for name, row in rows.items()
                  if key in row and not _is_missing(row[key])}
        if values:
            target = max(values.values()) if direction == "max" else min(values.values())
            winners[key] = {name for name, value in values.items() if value == target}
    lines = ["| " + " | ".join([row_header] + [headers.get(key, key) for key in columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = []
        for key in columns:
            text = _format_value(row.get(key), digits)
            cells.append(f"**{text}**" if name in winners.get(key, ()) else text)
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines)


def localisation_table(localisation: Mapping[str, Mapping[str, Any]], digits: int = 3) -> str:
    """Methods x localisation metrics (plus the tau each method used), best per column in bold."""
    columns = [key for key, _, _ in LOCALISATION_COLUMNS] + ["tau"]
    headers = {key: header for key, header, _ in LOCALISATION_COLUMNS} | {"tau": "tau"}
    best = {key: direction for key, _, direction in LOCALISATION_COLUMNS}
    return format_table(localisation, columns, best, headers=headers, digits=digits)


def _classification_rows(classification: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    rows = {}
    for model, levels in classification.items():
        if not isinstance(levels, Mapping) or not ({"image", "study"} & set(levels)):
            raise ValueError(
                f"classification[{model!r}] must be {{'image': metrics, 'study': metrics, ...}}, got keys "
                f"{sorted(levels) if isinstance(levels, Mapping) else type(levels).__name__}.")
        for level in ("image", "study"):
            if level in levels:
                metrics = levels[level]
                rows[f"{model} ({level})"] = {**metrics, "n": metrics.get("counts", {}).get("n")}
    return rows


def classification_table(classification: Mapping[str, Mapping[str, Any]], digits: int = 3) -> str:
    """Models x classification metrics, one row per model and level (image, study)."""
    return format_table(_classification_rows(classification), [key for key, _ in CLASSIFICATION_COLUMNS],
                        headers=dict(CLASSIFICATION_COLUMNS), row_header="model (level)", digits=digits)


def _best_summary(localisation: Mapping[str, Mapping[str, Any]], digits: int = 3) -> list[str]:
    """One line per localisation metric naming the best method(s) and the runner-up."""
    lines, wins = [], {}
    for key, header, direction in LOCALISATION_COLUMNS:
        values = {m: round(float(r[key]), digits) for m, r in localisation.items()
                  if key in r and not _is_missing(r[key])}
        if not values:
            continue
        target = max(values.values()) if direction == "max" else min(values.values())
        winners = [m for m, v in values.items() if v == target]
        others = {m: v for m, v in values.items() if v != target}
        for winner in winners:
            wins[winner] = wins.get(winner, 0) + 1
        gap = ""
        if others:
            second = (max if direction == "max" else min)(others, key=others.get)
            gap = f", next {second} at {others[second]:.{digits}f}"
        lines.append(f"- {header}: best is {' and '.join(winners)} ({target:.{digits}f}{gap}).")
    if wins:
        top = max(wins.values())
        leaders = [m for m, w in wins.items() if w == top]
        lines[:0] = [f"{' and '.join(leaders)} {'is' if len(leaders) == 1 else 'are each'} best (ties included) "
                     f"on {top} of {len(lines)} localisation metrics.", ""]
    return lines


def _figure_notes(figures: Mapping[str, str], localisation: Mapping[str, Any]) -> list[str]:
    notes = []
    if "figure2" in figures:
        notes.append(
            f"- `{figures['figure2']}`: one test image per row; columns show the image, its lesion mask "
            "(red), then each method's map over the image on one shared 0-1 colour scale, the lesion "
            "outlined in white. A map that localises well is hot inside the outline and cold outside; "
            "heat on a marker or the image border is a shortcut, not the lesion.")
    if "pr_curves" in figures:
        notes.append(
            f"- `{figures['pr_curves']}`: pixel precision-recall curves with all test lesion pixels pooled; "
            "the area under each curve is the PxAP column. Higher and further right means more lesion "
            "found for fewer false alarms.")
    if "confusion_matrix" in figures:
        notes.append(
            f"- `{figures['confusion_matrix']}`: true (rows) against predicted (columns) class of the test "
            "images at probability threshold 0.5, with each row's share.")
    for name, path in figures.items():
        if name not in ("figure2", "pr_curves", "confusion_matrix"):
            notes.append(f"- `{path}`: {name}.")
    return notes


def _convention_line(localisation: Mapping[str, Mapping[str, Any]]) -> str:
    """Which box/PxAP convention (`localisation.localisation_metrics`) the numbers follow."""
    used = {m: r.get("box_convention") for m, r in localisation.items()}
    described = {
        "wsolevaluation": "the wsolevaluation convention (boxes of every contour, holes included, "
                          "as its OpenCV code draws them), comparable with published tables",
        "clean": "the clean convention (exact component extents, no hole boxes), not directly "
                 "comparable with published tables",
    }
    known = set(used.values())
    if known == {None}:
        return "MaxBoxAccV2 and PxAP convention: not recorded."
    if len(known) == 1:
        (convention,) = known
        return f"MaxBoxAccV2 and PxAP follow {described.get(convention, repr(convention))}."
    return "MaxBoxAccV2 and PxAP conventions differ by method: " + ", ".join(
        f"{m} {c or 'not recorded'}" for m, c in used.items()) + "."


def _body_part_section(metrics: Mapping[str, Any]) -> list[str]:
    """Localisation per body part next to its study-level kappa (`by_body_part.table`)."""
    layout = by_body_part.table(metrics)
    if layout is None:
        return []
    rows, columns, headers = layout
    return ["## Per body part: study-level kappa and localisation", "",
            format_table(rows, columns, headers=headers, row_header="body part"), "",
            by_body_part.NOTE, ""]


def write_report(path, metrics: Mapping[str, Any], notes: str = "",
                 sections: Sequence[tuple[str, str]] = ()) -> str:
    """Writes the Markdown report to `path` (parents created) and returns its text.

    ``sections``: further (title, Markdown) sections, after the tables and before the notes.
    """
    localisation = metrics.get("localisation") or {}
    classification = metrics.get("classification") or {}
    figures = metrics.get("figures") or {}
    parts = ["# Evaluation report", ""]
    if "split" in metrics:
        parts.append(f"Split: `{metrics['split']}`.")
    if metrics.get("checkpoint_steps"):
        chosen = metrics.get("checkpoint_selection") or {}   # absent from reports made before it existed
        steps = ", ".join(f"{stage} step {step}" + (f" (chosen by {chosen[stage]})" if chosen.get(stage) else "")
                          for stage, step in metrics["checkpoint_steps"].items())
        parts.append(f"Checkpoints: {steps}.")
    parts.append("")

    if localisation:
        first = next(iter(localisation.values()))
        parts += ["## Localisation", "", localisation_table(localisation), ""]
        parts.append(
            f"Scored on {first.get('n_images', 'n/a')} test images with a lesion mask "
            f"({first.get('n_excluded', 'n/a')} normal images excluded). Best per column in bold. "
            "IoU and Dice threshold the map at tau, chosen per method on the held-out labelled split; "
            f"pointing-game tolerance {_format_value(first.get('tolerance'), 0)} px; PxAP and MaxBoxAccV2 "
            "(mean over box IoU 0.3/0.5/0.7) sweep all thresholds (Choe et al., CVPR 2020).")
        parts.append(_convention_line(localisation))
        parts.append("")

    if classification:
        parts += ["## Classification", "", classification_table(classification), ""]
        parts.append("A prediction is abnormal when its probability is > 0.5; a study's probability is the mean "
                     "of its images'.")
        parts.append("")
        for model, levels in classification.items():
            if levels.get("per_group"):
                level = "study" if any("n_studies" in m for m in levels["per_group"].values()) else "image"
                rows = {g: {**m, "n": m.get("counts", {}).get("n")} for g, m in levels["per_group"].items()}
                parts += [f"### {model}: per body part ({level} level)", "",
                          format_table(rows, [k for k, _ in CLASSIFICATION_COLUMNS],
                                       headers=dict(CLASSIFICATION_COLUMNS), row_header="body part"), ""]

    parts += _body_part_section(metrics)
    summary = _best_summary(localisation) if localisation else []
    figure_notes = _figure_notes(figures, localisation)
    if summary or figure_notes:
        parts += ["## What the figures show", ""]
        parts += summary + ([""] if summary else []) + figure_notes + [""]
    for title, text in sections:
        parts += [f"## {title}", "", text.strip(), ""]
    if notes.strip():
        parts += ["## Notes", "", notes.strip(), ""]
    text = "\n".join(parts)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
