"""What the seeded study at the demo's size supports, for the demo's summary to print (issue 22).

A single demo run is one seed; a claim such as "the decoder localises better than the segmenter"
holds only where the paired differences over seeds say so. The study's findings are kept with
the package as data (`FINDINGS_FILE`, written from a finished study by
``python experiments/study.py --preset demo --workdir W --export-findings``):

    export(study_json, recipe(config))     # {"recipe", "seeds", "runs", "seconds", "paired", "source", "written"}
    supported_lines(config)                # the differences whose 95 % interval excludes 0

`supported_lines` answers only for the recipe the study ran (`recipe`: the config fields a result
depends on, less those the study sets per run) and for the demo's shortcut setting and label
count; for any other recipe it says that no claim is made.
"""

from __future__ import annotations

import datetime
import json
import pathlib

from pcam_jax import configs
from pcam_jax.study.runner import SHORTCUT_FIELDS
from pcam_jax.study.tables import METRICS, paired_differences

FINDINGS_FILE = pathlib.Path(__file__).with_name("demo_findings.json")
# Config sections a result depends on, and the fields in them that do not change a number or that the
# study sets per run (the seed, the label count, the shortcut setting: matched separately).
RECIPE_SECTIONS = ("model", "optimizer", "stage1", "stage2", "stage3", "stage4", "synthetic", "data")
NOT_RECIPE = {f"data.{f}" for f in ("data_dir", "prefetch", "eval_batch_size", "folder_csv", "folder_root")} | {
    f"synthetic.{f}" for f in ("seed", "num_labelled") + SHORTCUT_FIELDS}


def recipe(config) -> dict:
    """``{"section.field": value}`` of ``config`` for the fields a study result depends on
    (`RECIPE_SECTIONS` less `NOT_RECIPE`, and the pointing-game tolerance), JSON-safe."""
    flat = configs.flatten(configs.to_json_dict(config))
    return {k: v for k, v in flat.items()
            if (k.split(".")[0] in RECIPE_SECTIONS and k not in NOT_RECIPE) or k == "eval.pointing_tolerance"}


def shortcut_setting(config) -> str:
    """"on" where the synthetic world draws a side marker or hardware, else "off" (the study's names)."""
    return "on" if any(float(config.synthetic[f]) > 0 for f in SHORTCUT_FIELDS) else "off"


def export(study: dict, study_recipe: dict, source: str = "") -> dict:
    """The findings kept with the package: the study's paired differences (per shortcut setting),
    its seeds, recipe and wall time. ``study``: the study.json `pcam_jax.study.run_study` wrote."""
    seeds = sorted({r["run"]["seed"] for r in study["runs"]})
    return {"recipe": study_recipe, "seeds": seeds, "runs": len(study["runs"]),
            "seconds": study.get("seconds"), "paired": paired_differences(study["runs"]), "source": source,
            "written": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"}


def load(path=None) -> dict | None:
    """The findings at ``path`` (default `FINDINGS_FILE`); None where there are none."""
    path = pathlib.Path(FINDINGS_FILE if path is None else path)
    return json.loads(path.read_text()) if path.is_file() else None


def _differs(current: dict, saved: dict) -> list[str]:
    """The fields (dotted names) where the ``current`` recipe and a ``saved`` one differ. A field the
    saved recipe predates counts only where ``current`` sets it away from the library's default (a
    new option whose default keeps the old behaviour changes no study's number)."""
    defaults = recipe(configs.get_config("base"))
    return [k for k in sorted(set(current) | set(saved))
            if current.get(k, "<absent>") != saved.get(k, defaults.get(k, "<absent>"))]


def supported_lines(config, findings: dict | None = None) -> list[str]:
    """Lines for the demo's summary: each paired difference of the study, at ``config``'s shortcut
    setting, label count and stage-2 mask mode, whose 95 % interval excludes 0 (with its mean, interval and seeds);
    then the comparisons it could not tell apart. One line saying why when there is no study for
    this recipe."""
    findings = load() if findings is None else findings
    if findings is None:
        return ["no seeded study is kept with this package: no seed-independent claim is made"]
    differs = _differs(recipe(config), findings["recipe"])
    if differs:
        shown = ", ".join(differs[:4]) + (" ..." if len(differs) > 4 else "")
        return [f"this recipe differs from the seeded study's ({shown}): no seed-independent claim is made"]
    setting, labels = shortcut_setting(config), int(config.synthetic.num_labelled)
    supported, unclear = [], []
    for row in findings["paired"].get(setting, []):
        if row["labels"] not in (None, labels) or row["mode"] not in ("", config.stage2.mask_mode):
            continue
        name = row["comparison"]
        for metric, title in METRICS.items():
            cell = row.get(metric) or {}
            if cell.get("mean") is None:
                continue
            if cell.get("low") is not None and (cell["low"] > 0 or cell["high"] < 0):
                supported.append(f"  {name}: {title} {cell['mean']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]")
            elif metric in ("pointing_game", "pxap"):
                unclear.append(f"{name} ({title})")
    seeds = findings["seeds"]
    lines = [f"what {len(seeds)} seeds of this recipe support (paired differences within a seed, 95 % t-interval; "
             f"shortcut {setting}, {labels} labels; experiments/study.py --preset demo, docs/RESULTS.md section 5):"]
    lines += supported or ["  none of the paired differences excludes 0"]
    if unclear:
        lines.append("  not told apart by the seeds: " + "; ".join(unclear))
    return lines
