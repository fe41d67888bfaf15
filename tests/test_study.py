"""The seeded study (`pcam_jax.study`, `experiments/study.py`): intervals, the grid, resume, one tiny run."""

import json
import math

import pytest

from pcam_jax import study
from pcam_jax.configs import get_config
from pcam_jax.study.tables import format_cell, mean_interval, paired_differences, t_quantile
from tests.commands import load_experiment


def _entry_point():
    return load_experiment("study")


# --- the interval ------------------------------------------------------------------------------

def test_mean_interval_is_the_t_interval_computed_by_hand():
    # Table values of Student's t, two-sided 95 %: df 2 -> 4.303, df 3 -> 3.182, df 9 -> 2.262.
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(0.975, 3) == pytest.approx(3.182, abs=5e-4)
    assert t_quantile(0.975, 9) == pytest.approx(2.262, abs=5e-4)
    # [1, 2, 3]: mean 2, sample std 1, half-width t(0.975, 2) * 1 / sqrt(3) = 2.484.
    got = mean_interval([1, 2, 3])
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["half_width"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert got["half_width"] == pytest.approx(2.484, abs=1e-3)
    assert (got["low"], got["high"]) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    # [0.5, 0.7, 0.6, 0.8]: mean 0.65, s = sqrt(0.05 / 3), half-width 3.182 * s / 2 = 0.2054.
    got = mean_interval([0.5, 0.7, 0.6, 0.8])
    assert got["mean"] == pytest.approx(0.65)
    assert got["half_width"] == pytest.approx(3.1824 * math.sqrt(0.05 / 3) / 2, abs=1e-4)


def test_mean_interval_drops_missing_values_and_needs_two_for_an_interval():
    got = mean_interval([0.4, None, float("nan"), 0.6])
    assert got["n"] == 2 and got["mean"] == pytest.approx(0.5)
    assert got["half_width"] == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2), abs=1e-3)
    one = mean_interval([0.7])
    assert one["mean"] == 0.7 and one["half_width"] is None and format_cell(one) == "0.700 (n=1)"
    assert mean_interval([None])["mean"] is None and format_cell(mean_interval([])) == "-"
    assert format_cell(mean_interval([1, 2, 3])) == "2.000 [-0.484, 4.484]"


# --- the grid ----------------------------------------------------------------------------------

def test_the_default_grid_has_every_method_for_every_seed_and_shortcut_setting():
    runs = study.grid((0, 1, 2))
    names = [r.name for r in runs]
    assert len(runs) == 3 * 2 * 9 and len(set(names)) == len(names)
    group = [r.short_name for r in runs if r.group == "seed1-shortcut_off"]
    assert group == ["stage1", "stage2-keep", "stage2-erase", "stage3-keep-n10", "stage3-keep-n30",
                     "stage3-keep-n100", "stage4-n10", "stage4-n30", "stage4-n100"]
    position = {name: i for i, name in enumerate(names)}
    for run in runs:
        for source, _ in run.sources:           # what a run copies is finished before it
            assert position[source] < position[run.name]
        if run.stage == 3:                       # stage 3 reuses its group's stage-2 keep run
            assert run.sources == ((f"{run.group}/stage2-keep", 2),)
        else:                                    # stage 2 from scratch (the paper), stage 4 from scratch
            assert run.sources == ()
    # Stages 1 and 2 share the dataset of the largest label count (the same images).
    assert {r.labels for r in runs if r.stage in (1, 2)} == {100}
    assert {r.shortcut for r in runs} == {"on", "off"} and {r.seed for r in runs} == {0, 1, 2}


def test_the_grid_follows_the_configs_sources_and_label_counts():
    config = get_config("synthetic")
    config.stage2.init_from = "stage1"
    runs = study.grid((0,), shortcuts=("on",), modes=("keep", "erase"), labels=(0, 5), stage3_mode="erase",
                      sources=study.stage_sources(config))
    by_name = {r.short_name: r for r in runs}
    assert list(by_name) == ["stage1", "stage2-keep", "stage2-erase", "stage3-erase-n5", "stage4-n5"]
    assert by_name["stage2-keep"].sources == (("seed0-shortcut_on/stage1", 1),)
    assert by_name["stage3-erase-n5"].sources == (("seed0-shortcut_on/stage2-erase", 2),)
    assert [r.short_name for r in study.grid((0,), shortcuts=("off",), labels=(0,))] == [
        "stage1", "stage2-keep", "stage2-erase"]   # 0 labels: no stage 3 or 4 run (stage 2 stands in)
    with pytest.raises(ValueError, match="stage3_mode|mode 'erase'"):
        study.grid((0,), modes=("keep",), stage3_mode="erase")
    with pytest.raises(ValueError, match="shortcut"):
        study.grid((0,), shortcuts=("maybe",))


def test_run_config_sets_seed_shortcut_mode_and_labels(tmp_path):
    base = study.study_config("small")
    run = study.StudyRun(seed=2, shortcut="off", stage=3, labels=30, mode="erase")
    config = study.run_config(base, run, tmp_path / "data")
    assert config.seed == 2 and config.synthetic.seed == 2
    assert all(config.synthetic[f] == 0.0 for f in study.SHORTCUT_FIELDS)
    assert config.stage2.mask_mode == "erase" and config.synthetic.num_labelled == 30
    assert config.data.data_dir == str((tmp_path / "data").absolute())
    assert base.synthetic.marker_prob_abnormal > 0 and base.seed == 0     # the base is left alone
    on = study.run_config(base, study.StudyRun(1, "on", 1, 100), tmp_path, vary_data=False)
    assert on.synthetic.seed == base.synthetic.seed and on.synthetic.marker_prob_abnormal == base.synthetic.marker_prob_abnormal
    assert base.eval.trust_images == 0 and base.synthetic.lesion_level == "clear"
    assert study.study_config("demo", "subtle").synthetic.lesion_level == "subtle"


def test_overrides_keep_each_fields_type():
    config = study.apply_overrides(get_config("tiny"), [
        "data.batch_size=4", "optimizer.learning_rate=1e-2", "stage2.abnormal_only=false",
        "stage2.init_from=stage1", "model.widths=(4, 4)", "config.stage1.num_epochs=2"])
    assert config.data.batch_size == 4 and config.optimizer.learning_rate == 0.01
    assert config.stage2.abnormal_only is False and config.stage2.init_from == "stage1"
    assert tuple(config.model.widths) == (4, 4) and config.stage1.num_epochs == 2
    for bad in ("data.nope=1", "data.batch_size", "nope.x=1"):
        with pytest.raises(ValueError, match="override"):
            study.apply_overrides(get_config("tiny"), [bad])


# --- running, resuming -------------------------------------------------------------------------

def _fake_metrics(run):
    """What `evaluate_workdir` returns, with numbers that depend on the seed."""
    name, value = f"stage{run.stage}", 0.5 + 0.1 * run.seed
    return {"classification": {name: {"image": {"cohen_kappa": value, "auroc": value + 0.2}}},
            "shortcuts": {name: {"lesion_auroc": {"pooled": value + 0.1}}},
            "localisation": {f"{name}/{m}": {"pointing_game": value, "pxap": value / 2} for m in study.SCORED[run.stage]}}


class FakeRunner:
    def __init__(self):
        self.calls = []

    def __call__(self, run, config, run_dir, should_stop=None):
        self.calls.append(run.name)
        (run_dir / "checkpoints" / f"stage{run.stage}" / "7").mkdir(parents=True, exist_ok=True)
        assert config.seed == run.seed and config.synthetic.num_labelled == run.labels
        return _fake_metrics(run)


def test_a_finished_run_is_skipped_and_sources_are_copied(tmp_path):
    runs = study.grid((0, 1), shortcuts=("on",), modes=("keep",), labels=(0, 10))
    runner, lines = FakeRunner(), []
    out = study.run_study(runs, get_config("tiny"), tmp_path, runner=runner, log=lines.append)
    assert runner.calls == [r.name for r in runs] and not out["stopped"]
    assert (tmp_path / "seed1-shortcut_on/stage3-keep-n10/checkpoints/stage2/7").is_dir()   # stage 2 copied in
    assert any("run 2/8: seed0-shortcut_on/stage2-keep ... done in" in l and "ETA" in l for l in lines)
    for name in ("study.json", "study.md", "label_efficiency.png"):
        assert (tmp_path / name).is_file()
    rows = {(r["row"], r["labels"]): r for r in json.loads((tmp_path / "study.json").read_text())["aggregate"]["on"]}
    cam = rows[("stage1: CAM", None)]
    assert cam["kappa"]["mean"] == pytest.approx(0.55) and cam["kappa"]["n"] == 2 and cam["seeds"] == [0, 1]
    zero = rows[("stage3, 0 labels = stage2 (keep): attention (positive CAM)", 0)]
    assert zero["pxap"]["mean"] == pytest.approx(rows[("stage2 (keep): attention (positive CAM)", None)]["pxap"]["mean"])
    assert zero["curve"] == 3 and rows[("stage3 (keep): decoder", 10)]["curve"] == 3
    segmenter = rows[("stage4 segmenter, labelled only: decoder", 10)]
    assert segmenter["kappa"]["mean"] is None and segmenter["pointing_game"]["n"] == 2   # not a classifier
    table = (tmp_path / "study.md").read_text()
    assert "## Shortcut on" in table and "| stage1: CAM | - | 2 | 0.550 [" in table

    again, lines = FakeRunner(), []
    study.run_study(runs, get_config("tiny"), tmp_path, runner=again, log=lines.append)
    assert again.calls == [] and sum("finished before" in l for l in lines) == len(runs)
    (tmp_path / runs[-1].name / study.RESULT).unlink()            # one run not finished: only it runs
    study.run_study(runs, get_config("tiny"), tmp_path, runner=again, log=lines.append)
    assert again.calls == [runs[-1].name]


def test_a_stop_request_between_runs_returns_and_resumes_later(tmp_path):
    runs = study.grid((0,), shortcuts=("off",), modes=("keep",), labels=(0,))
    runner = FakeRunner()
    out = study.run_study(runs, get_config("tiny"), tmp_path, runner=runner, log=lambda _: None,
                          should_stop=lambda: bool(runner.calls))
    assert out["stopped"] and runner.calls == [runs[0].name] and not (tmp_path / "study.json").exists()
    study.run_study(runs, get_config("tiny"), tmp_path, runner=runner, log=lambda _: None)
    assert runner.calls == [r.name for r in runs]


def test_the_entry_point_lists_the_grid(capsys):
    module = _entry_point()
    args = module.parse_args(["--dry-run", "--seeds", "0,1", "--shortcut", "on", "--labels", "0,10",
                              "--config.stage2.init_from=stage1", "--set", "data.batch_size=8"])
    assert args.overrides == ["stage2.init_from=stage1", "data.batch_size=8"]
    assert module.study(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 * 5 and printed[1] == "run 2/10: seed0-shortcut_on/stage2-keep  (copies stage 1 of seed0-shortcut_on/stage1)"


def test_an_interval_is_clipped_to_the_metrics_range_and_says_so():
    # [0.9, 1, 1]: mean 0.9667, s = 0.0577, half-width 4.303 * 0.0577 / sqrt(3) = 0.1434 -> [0.823, 1.110]
    got = mean_interval([0.9, 1.0, 1.0], bounds=(0.0, 1.0))
    assert got["half_width"] == pytest.approx(4.3027 * math.sqrt(1 / 300) / math.sqrt(3), abs=1e-4)
    assert (got["low"], got["high"], got["clipped"]) == (pytest.approx(0.9667 - 0.1434, abs=1e-4), 1.0, True)
    assert format_cell(got).endswith("1.000]*")
    inside = mean_interval([0.4, 0.5, 0.6], bounds=(0.0, 1.0))
    assert not inside["clipped"] and inside["high"] < 1.0


def _result(seed, stage, mode, labels, **maps):
    metrics = ("kappa", "auroc", "lesion_auroc", "pointing_game", "pxap")
    return {"run": {"seed": seed, "shortcut": "on", "stage": stage, "labels": labels, "mode": mode},
            "rows": [dict({m: None for m in metrics}, map=name, **values) for name, values in maps.items()]}


def test_paired_differences_pair_runs_of_the_same_seed_and_label_count():
    results = []
    # per seed: stage-1 CAM / positive CAM, stage-2 keep, stage 3 and the segmenter at 10 labels
    for seed, (cam, pcam, attention, decoder, segmenter) in enumerate([(0.1, 0.2, 0.3, 0.8, 0.6),
                                                                        (0.2, 0.3, 0.35, 0.9, 0.6),
                                                                        (0.15, 0.35, 0.3, 0.85, 0.7)]):
        results += [_result(seed, 1, "", 100, cam={"pointing_game": cam}, positive_cam={"pointing_game": pcam}),
                    _result(seed, 2, "keep", 100, positive_cam={"pointing_game": attention}),
                    _result(seed, 3, "keep", 10, decoder={"pointing_game": decoder}),
                    _result(seed, 4, "", 10, decoder={"pointing_game": segmenter}),
                    _result(seed, 4, "", 30, decoder={"pointing_game": 0.0})]   # no stage 3 at 30: no pair
    rows = {(r["comparison"], r["labels"]): r for r in paired_differences(results)["on"]}
    assert set(rows) == {("stage 3 decoder - stage 4 segmenter", 10), ("stage 2 attention - stage 1 positive CAM", None),
                         ("stage 1 positive CAM - stage 1 CAM", None)}
    decoder = rows[("stage 3 decoder - stage 4 segmenter", 10)]["pointing_game"]
    assert decoder["values"] == pytest.approx([0.2, 0.3, 0.15])
    # differences 0.2, 0.3, 0.15: mean 0.2167, s = 0.0764, half-width 4.303 * 0.0764 / sqrt(3) = 0.1898
    assert (decoder["mean"], decoder["half_width"]) == pytest.approx((0.21667, 0.18977), abs=1e-4)
    assert rows[("stage 2 attention - stage 1 positive CAM", None)]["pointing_game"]["values"] == \
        pytest.approx([0.1, 0.05, -0.05])
    assert rows[("stage 1 positive CAM - stage 1 CAM", None)]["seeds"] == [0, 1, 2]


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_study_trains_scores_and_resumes(tmp_path, fast_compilation):
    runs = study.grid((0,), shortcuts=("on",), modes=("keep",), labels=(0, 4))
    config = study.study_config("tiny")
    lines = []
    out = study.run_study(runs, config, tmp_path, log=lines.append)
    assert [l.split(" ... ")[1][:7] for l in lines if " ... " in l and "done" in l] == ["done in"] * 4
    run_dirs = {r.short_name: tmp_path / r.name for r in runs}
    scored = json.loads((run_dirs["stage1"] / "eval" / "metrics.json").read_text())
    assert set(scored["localisation"]) == {"stage1/cam", "stage1/positive_cam"}   # no Score-CAM & co.
    stage3 = json.loads((run_dirs["stage3-keep-n4"] / "eval" / "metrics.json").read_text())
    assert set(stage3["localisation"]) == {"stage3/decoder", "stage3/positive_cam"}   # not the copied stage 2
    assert (run_dirs["stage3-keep-n4"] / "checkpoints" / "stage2").is_dir()
    rows = {(r["row"], r["labels"]): r for r in out["aggregate"]["on"]}
    for key in (("stage1: CAM", None), ("stage3 (keep): decoder", 4), ("stage4 segmenter, labelled only: decoder", 4)):
        assert 0.0 <= rows[key]["pointing_game"]["mean"] <= 1.0 and 0.0 <= rows[key]["pxap"]["mean"] <= 1.0
    assert 0.0 <= rows[("stage1: CAM", None)]["lesion_auroc"]["mean"] <= 1.0
    assert (tmp_path / "label_efficiency.png").stat().st_size > 1000
    assert "Paired differences, shortcut on" in (tmp_path / "study.md").read_text()
    # the segmenter is scored at the checkpoint the loop chose on held-out decoder PxAP, not its random head's AUROC
    segmenter = json.loads((run_dirs["stage4-n4"] / "eval" / "metrics.json").read_text())
    assert segmenter["checkpoint_selection"]["stage4"].startswith("heldout_pxap (max) on ")
    lines.clear()
    study.run_study(runs, config, tmp_path, log=lines.append)       # all finished: nothing trains
    assert sum("finished before" in l for l in lines) == len(runs)


# --- what the demo's summary may claim (pcam_jax.study.findings) -------------------------------

def test_the_demo_runs_the_recipe_of_the_demo_preset_study():
    from pcam_jax.cli.demo_phases import demo_config
    from pcam_jax.study import findings

    demo = demo_config(workdir="/tmp/somewhere")
    assert findings.recipe(demo) == findings.recipe(study.study_config("demo"))
    assert findings.shortcut_setting(demo) == "on"
    changed = demo_config(workdir="/tmp/x")
    with changed.unlocked():
        changed.stage3.num_epochs += 1
        changed.data.data_dir = "/elsewhere"   # where the data lie is not part of the recipe
    assert findings._differs(findings.recipe(changed), findings.recipe(demo)) == ["stage3.num_epochs"]
    # the findings shipped with the package are of this recipe (the demo's summary claims them)
    assert findings._differs(findings.recipe(demo), findings.load()["recipe"]) == []
    # a field the saved recipe predates: no difference at the library's default, one away from it
    older = {k: v for k, v in findings.recipe(demo).items() if k != "stage3.labelled_list"}
    assert findings._differs(findings.recipe(demo), older) == []
    with changed.unlocked():
        changed.stage3.num_epochs -= 1
        changed.stage3.labelled_list = "ranked.csv"
    assert findings._differs(findings.recipe(changed), older) == ["stage3.labelled_list"]


def _findings_of(tmp_path, config):
    """A finished fake study of 3 seeds (decoder - segmenter pointing game 0.2, 0.3, 0.1 at 10 labels)
    exported through the entry point's --export-findings."""
    results = []
    for seed, (decoder, segmenter) in enumerate([(0.8, 0.6), (0.9, 0.6), (0.8, 0.7)]):
        results += [_result(seed, 3, "keep", 10, decoder={"pointing_game": decoder, "pxap": 0.3}),
                    _result(seed, 4, "", 10, decoder={"pointing_game": segmenter, "pxap": 0.3 + 0.01 * (seed - 1)})]
    study_json = {"stopped": False, "runs": results, "paired": paired_differences(results), "seconds": 12.0}
    (tmp_path / "study.json").write_text(json.dumps(study_json))
    out = tmp_path / "findings.json"
    assert _entry_point().export_findings(tmp_path, config, str(out)) == 0
    return json.loads(out.read_text())


def test_the_summary_claims_only_differences_whose_interval_excludes_0(tmp_path):
    from pcam_jax.study import findings

    config = get_config("tiny")
    with config.unlocked():
        config.synthetic.num_labelled = 10
    kept = _findings_of(tmp_path, config)
    assert kept["seeds"] == [0, 1, 2] and kept["runs"] == 6
    lines = findings.supported_lines(config, kept)
    # pointing game differences 0.2, 0.3, 0.1: mean 0.2, half-width 4.303 * 0.1 / sqrt(3) = 0.248 -> spans 0;
    # PxAP differences 0.0, 0.01, 0.02 -> mean 0.01, half-width 0.0248: spans 0 too. Nothing is claimed.
    assert lines[1] == "  none of the paired differences excludes 0"
    assert "stage 3 decoder - stage 4 segmenter (pointing game)" in lines[2]
    # the same pointing game differences tighter (0.2, 0.21, 0.19): half-width 0.0248 -> claimed
    for row in kept["paired"]["on"]:
        row["pointing_game"] = mean_interval([0.2, 0.21, 0.19])
    lines = findings.supported_lines(config, kept)
    assert lines[1] == "  stage 3 decoder - stage 4 segmenter: pointing game +0.200 [+0.175, +0.225]"
    assert "3 seeds" in lines[0] and "10 labels" in lines[0]
    with config.unlocked():                 # another label count: no comparison of that count is kept
        config.synthetic.num_labelled = 30
    assert findings.supported_lines(config, kept)[1] == "  none of the paired differences excludes 0"
    other = get_config("tiny")
    with other.unlocked():
        other.optimizer.learning_rate *= 2
    assert "differs from the seeded study's (optimizer.learning_rate)" in findings.supported_lines(other, kept)[0]


def test_the_demo_summary_prints_the_kept_findings(tmp_path, monkeypatch):
    from pcam_jax.cli import demo_phases
    from pcam_jax.study import findings

    config = get_config("tiny")
    kept = _findings_of(tmp_path, config)
    monkeypatch.setattr(findings, "FINDINGS_FILE", tmp_path / "findings.json")
    text = demo_phases.summarize(tmp_path, {}, {"train": 1.0}, config)
    assert "what 3 seeds of this recipe support" in text and "none of the paired differences excludes 0" in text
    assert kept["recipe"] == findings.recipe(config)
    monkeypatch.setattr(findings, "FINDINGS_FILE", tmp_path / "absent.json")
    assert "no seeded study is kept with this package" in demo_phases.summarize(tmp_path, {}, {}, config)


def test_study_shortcuts_reads_each_cell_of_the_counterfactual_report():
    module = load_experiment("study_shortcuts")
    cells = {f"lesion={l},marker={m},hardware={h}": {"lesion": 0.1 * l + 0.01 * m, "hardware": 0.2 * h + 0.05 * l}
             for l in (0, 1) for m in (0, 1) for h in (0, 1)}
    report = {"hardware": {"effect_normal": 0.3}, "marker": {"effect_normal": 0.1}, "lesion_auroc": {"pooled": 0.9},
              "argmax": {"decoder": {"all": {"hardware": 0.17}, "per_cell": cells}}}
    got = module.run_numbers(report)
    assert got["hardware effect (normal)"] == 0.3 and got["decoder: on hardware, all limbs"] == 0.17
    assert got["decoder: on hardware, lesion-free"] == pytest.approx(0.2)          # (0.2 + 0.2) / 2
    assert got["decoder: on hardware, with lesion"] == pytest.approx(0.25)         # 0.2 + 0.05
    assert got["decoder: on lesion, with lesion and hardware"] == pytest.approx(0.105)   # (0.1 + 0.11) / 2


def test_two_maps_of_one_classifier_report_no_classifier_difference():
    results = [_result(seed, 1, "", 100, cam={"pointing_game": 0.1, "kappa": 0.7 + 0.01 * seed},
                       positive_cam={"pointing_game": 0.3, "kappa": 0.7 + 0.01 * seed}) for seed in range(3)]
    (row,) = paired_differences(results)["on"]
    assert row["comparison"] == "stage 1 positive CAM - stage 1 CAM"
    assert row["pointing_game"]["mean"] == pytest.approx(0.2) and row["kappa"]["mean"] is None
