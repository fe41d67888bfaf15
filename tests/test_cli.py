"""`pcam-jax train`, `experiments/train.py` and `pcam-jax demo` end to end on the tiny config,
with the real synthetic TFDS data and pipeline."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.commands import pcam_jax_command
from pcam_jax.training import checkpointing

REPO = pathlib.Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli_run")
    code = pcam_jax_command("train", "--config", "tiny", "--workdir", str(workdir), "--stages", "1,2,3",
                            f"--config.data.data_dir={workdir / 'data'}", "--config.stage2.mask_mode=erase",
                            "--config.train.log_every_steps=3")
    return workdir, code


def test_train_command_runs_all_stages_with_overrides(trained):
    workdir, code = trained
    assert code == 0
    for stage in (1, 2, 3):
        config, variables, meta = checkpointing.restore_for_eval(workdir, stage, "latest")
        # tiny: 48 train images, batch 8 -> 6 steps per epoch, one epoch per stage
        assert (meta["step"], meta["epoch"], meta["stage"]) == (6, 1, stage)
        assert config.stage2.mask_mode == "erase" and config.train.log_every_steps == 3
        assert all(np.isfinite(np.asarray(x)).all() for x in
                   jax.tree.leaves(variables["params"]))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records if r["split"] == "train"] == [
        (s, k) for s in (1, 2, 3) for k in (3, 6)]
    evals = [r for r in records if r["split"] == "model_selection"]
    assert [r["stage"] for r in evals] == [1, 2, 3]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in evals)
    assert any((workdir / "tensorboard").iterdir())


def test_experiments_train_rejects_a_changed_model_config_naming_the_field(trained):
    # A separate process: ml_collections' override flags can be parsed once per process.
    workdir, _ = trained
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "train.py"), "--config", "tiny", "--workdir", str(workdir),
         "--stages", "1,2,3", f"--config.data.data_dir={workdir / 'data'}", "--config.model.stem_width=6"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model.stem_width: checkpoint 4, now 6" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_on_a_trained_workdir_evaluates_and_reports_phase_times(trained, capsys):
    from pcam_jax import configs
    from pcam_jax.cli import demo_phases as demo

    workdir, _ = trained
    config = configs.get_config("tiny")
    config.stage2.mask_mode = "erase"
    config.train.log_every_steps = 3
    result = demo.run_demo(workdir, config)
    out = capsys.readouterr().out
    assert list(result["seconds"]) == ["prepare data", "train", "evaluate"]
    for phase in ("prepare data", "train", "evaluate", "total"):
        assert f"  {phase}" in out
    assert "stage 3: finished at step 6" in out           # training resumed: nothing to redo
    assert all(r["skipped"] for r in result["outputs"]["train"].values())
    assert (workdir / "eval" / "report.md").is_file()
    assert set(result["outputs"]["evaluate"]["classification"]) == {"stage1", "stage2", "stage3"}
    assert out.count("| stage3/decoder |") == 1            # the localisation table is printed once


def test_config_overrides_without_config_use_the_demo_preset_and_elsewhere_say_what_is_missing(tmp_path, capsys):
    from pcam_jax.cli.process import resolve_config_argv
    from pcam_jax.configs import config_path

    assert resolve_config_argv(["--workdir=w", "--config.stage1.num_epochs=1"], "synthetic") == [
        "--config", str(config_path("synthetic")), "--workdir=w", "--config.stage1.num_epochs=1"]
    assert resolve_config_argv(["--config", "tiny", "--config.a=1"], "synthetic") == [
        "--config", str(config_path("tiny")), "--config.a=1"]  # a named config wins
    # The override reaches the demo's preset (here its field check, before any work is done).
    assert pcam_jax_command("demo", "--workdir", tmp_path / "d", "--config.model.nope=1") == 2
    assert "config.model has no field 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    assert pcam_jax_command("train", "--workdir", tmp_path / "t", "--config.model.nope=1") == 2
    assert "put --config PRESET" in capsys.readouterr().err
