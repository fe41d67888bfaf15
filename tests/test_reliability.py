"""Reliability: damaged checkpoints, preemption signals, divergence, and one-line errors.

One uninterrupted stage-1 run (12 steps, a checkpoint every 2) is the reference; every
interrupted or damaged run must end with exactly its parameters (bit for bit), its
confidence state and its metrics.jsonl records.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import pcam_jax
from pcam_jax import configs, errors
from pcam_jax.training import checkpointing, guards, loop
from tests.test_loop import FakeData, quiet_reporter

REPO = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("fast_compilation")  # see conftest.py

# The run, as flags of `pcam-jax train` and as the same config built in this process.
OVERRIDES = {"stage1.num_epochs": 2, "train.checkpoint_every_steps": 2, "train.keep_checkpoints": 10,
             "train.log_every_steps": 1, "train.image_summary_every_steps": 0}


def run_config(**changes):
    config = configs.get_config("tiny")
    for dotted, value in {**OVERRIDES, **changes}.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def train(config, workdir, **kwargs):
    return loop.train_and_evaluate(config, workdir, (1,), data=FakeData(config),
                                   reporter=quiet_reporter(workdir), **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    train(run_config(), workdir)
    return workdir


def final_state(workdir):
    config, variables, meta = checkpointing.restore_for_eval(workdir, 1, "latest")
    return variables, meta


def assert_same_run(workdir, reference):
    """Bit-identical final parameters/BatchNorm stats, same step and confidence, same log records."""
    got, got_meta = final_state(workdir)
    want, want_meta = final_state(reference)
    assert got_meta["step"] == want_meta["step"] == 12
    assert got_meta["confidence"] == want_meta["confidence"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = lambda w: [{k: v for k, v in r.items() if k not in ("time", "images_per_second")}
                         for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines())]
    assert records(workdir) == records(reference)   # every step logged once, same losses


def partial_copy(reference, target, last_step):
    """The reference run as a kill after ``last_step`` left it: later checkpoints gone, but
    metrics.jsonl still holding records of the steps after the last checkpoint."""
    shutil.copytree(reference, target)
    stage = checkpointing.stage_directory(target, 1)
    for step in stage.iterdir():
        if step.name.isdigit() and int(step.name) > last_step:
            shutil.rmtree(step)
    return stage


# -- damaged checkpoints ------------------------------------------------------------------------

def _missing_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


def _truncated_array_file(step_dir):
    # The OCDBT data files holding the arrays (a merged copy under state/d/, per-process ones below).
    for data in (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


def _emptied(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


DAMAGE = {8: _emptied, 6: _truncated_array_file, 4: _missing_metadata}


def test_damaged_checkpoints_are_set_aside_and_the_run_resumes_bit_identical(reference, tmp_path, capsys):
    # Killed after step 9: its checkpoints 8, 6 and 4 are damaged three ways; each in turn is
    # the latest, fails to restore, is moved aside, and the run resumes from step 2.
    stage = partial_copy(reference, tmp_path / "run", last_step=9)
    for step, damage in DAMAGE.items():
        damage(stage / str(step))
    results = train(run_config(), tmp_path / "run")
    err = capsys.readouterr().err
    for step in DAMAGE:
        assert f"stage 1 checkpoint step {step} ({stage / str(step)}) cannot be restored" in err
    moved = sorted(p.name.split("-")[0] for p in (stage / checkpointing.DAMAGED).iterdir())
    assert moved == ["4", "6", "8"]                       # kept, not deleted
    assert not (stage / checkpointing.DAMAGED / next(iter((stage / "damaged").iterdir())).name).is_file()
    assert results[1]["step"] == 12 and not results[1]["skipped"]
    assert_same_run(tmp_path / "run", reference)


def test_evaluation_and_load_fall_back_to_the_newest_intact_checkpoint(reference, tmp_path, capsys):
    stage = partial_copy(reference, tmp_path / "run", last_step=12)
    _missing_metadata(stage / "12")
    run = pcam_jax.load(tmp_path / "run", stage=1, which="latest")   # `which` is passed on
    assert run.step == 10
    assert "checkpoint step 12" in capsys.readouterr().err and not (stage / "12").exists()
    # "best" ranks end-of-epoch checkpoints (6 and 12; 12 is now gone): step 6.
    _, _, meta = checkpointing.restore_for_eval(tmp_path / "run", 1, "best")
    assert meta["step"] == 6
    assert pcam_jax.load(tmp_path / "run", stage=1, which=2).step == 2
    _truncated_array_file(stage / "4")
    with pytest.raises(errors.CheckpointError, match="holds no intact checkpoint of step 4"):
        pcam_jax.load(tmp_path / "run", stage=1, which=4)
    want, _ = final_state(reference)   # and the fallback restored the right step's numbers
    reference_10 = checkpointing.StageCheckpoints(reference, 1, read_only=True)
    try:
        _, variables_10, _ = checkpointing.intact_variables(
            reference_10, 10, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    finally:
        reference_10.close()
    for a, b in zip(jax.tree.leaves(run.variables), jax.tree.leaves(variables_10)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_config_mismatch_is_not_mistaken_for_damage(reference, tmp_path):
    stage = partial_copy(reference, tmp_path / "run", last_step=8)
    changed = run_config()
    changed.model.stem_width = 6
    with pytest.raises(errors.ConfigMismatchError, match="model.stem_width"):
        train(changed, tmp_path / "run")
    assert not (stage / checkpointing.DAMAGED).exists()


# -- preemption -----------------------------------------------------------------------------------

def _command(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, str(REPO / "tests" / "preemptible_train.py"), str(_gate(workdir)), "--config", "tiny",
            "--workdir", str(workdir), "--stages", "1", f"--data_dir={workdir / 'data'}", *flags]


def _gate(workdir):
    return workdir.parent / f"{workdir.name}.gate"


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"train"' in line]


def _wait_for(condition, process, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{what}: not seen (exit {process.returncode}) {err[-3000:]}")
        time.sleep(0.05)


def _run(workdir, signum=None, stop_at=None, timeout=300):
    """Run the command (status, stdout, stderr); with ``signum``, signal it at step ``stop_at``.

    Paced by the gate (`tests/preemptible_train.py`), not by the clock: the run may take train
    batches 0 to ``stop_at - 1``; with a prefetch of 2 it runs steps up to ``stop_at - 1`` and
    waits for batch ``stop_at`` (the look-ahead of step ``stop_at``) after step ``stop_at - 1``'s
    stop check. The signal is sent then; after a SIGTERM the gate opens once the command has said
    it will stop, so it finishes step ``stop_at`` and saves it, on any machine load."""
    gate = _gate(workdir)
    gate.write_text(str(stop_at) if signum is not None else "1000000")
    waiting = pathlib.Path(f"{gate}.waiting")
    waiting.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent / f"{workdir.name}.stderr", "w+") as err_file:
        process = subprocess.Popen(_command(workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=err_file,
                                   text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if signum is not None:
            _wait_for(lambda: waiting.is_file() and waiting.read_text() == str(stop_at), process, timeout,
                      f"the run waiting for train batch {stop_at}")
            process.send_signal(signum)
            if signum != signal.SIGKILL:
                _wait_for(lambda: "finishing the step in flight" in pathlib.Path(err_file.name).read_text(),
                          process, timeout, "the stop request acknowledged")
                gate.write_text("1000000")
        out, _ = process.communicate(timeout=timeout)
        err_file.seek(0)
        return process.returncode, out, err_file.read()


def test_sigkill_then_sigterm_and_the_resumed_run_is_bit_identical(reference, tmp_path):
    workdir = tmp_path / "run"
    code, _, _ = _run(workdir, signal.SIGKILL, stop_at=4)      # no warning, no save
    assert code == -signal.SIGKILL
    killed_at = max(_logged_steps(workdir))
    assert killed_at == 3                      # waiting for batch 4: steps 1-3 ran, step 2 was saved
    # The re-run resumes from the last checkpoint (step 2); SIGTERM once it is past the killed run's steps.
    code, _, err = _run(workdir, signal.SIGTERM, stop_at=7)
    assert code == errors.EXIT_INTERRUPTED, err[-3000:]
    final = err.strip().splitlines()[-1]
    assert final.startswith("pcam-jax train: SIGTERM: stopped at step ") and "Traceback" not in err
    stopped = int(final.split("stopped at step ")[1].split()[0])
    assert stopped == 7 and killed_at + 1 < stopped < 12   # mid-stage, after the steps the killed run logged
    assert final.endswith(f"checkpoint saved in {checkpointing.stage_directory(workdir, 1) / str(stopped)}; "
                          "re-run the same command to resume")
    checkpoints = checkpointing.StageCheckpoints(workdir, 1, read_only=True)
    assert checkpoints.latest_step() == stopped
    checkpoints.close()

    code, out, err = _run(workdir)   # the same command again
    assert code == 0, err[-3000:]
    assert f"stage 1: resuming from step {stopped}" in out
    assert_same_run(workdir, reference)
    # The command stored the data dir it resolved; `evaluate` without --data_dir reads that one.
    from pcam_jax.data import resolve_data_dir

    config, _, _ = checkpointing.restore_for_eval(workdir, 1, "best")
    assert config.data.data_dir == str(workdir / "data") == resolve_data_dir(config, None)


SIGNAL_SCRIPT = """
import time
from pcam_jax.training import guards
with guards.StopOnSignals() as stop:
    print('ready', flush=True)
    while not stop():
        time.sleep(0.01)
    print('asked', stop.signal_name, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_asks_to_stop_and_a_second_stops_at_once(signum):
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signum)          # Ctrl-C sends SIGINT: a request, no KeyboardInterrupt
    assert process.stdout.readline().strip() == f"asked {signal.Signals(signum).name}"
    process.send_signal(signum)
    assert process.wait(timeout=30) == -signum   # killed by the signal, not after 60 s
    err = process.stderr.read()
    assert "finishing the step in flight" in err and "KeyboardInterrupt" not in err and "Traceback" not in err


def test_signal_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with guards.StopOnSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) != before[0] and not stop()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# -- divergence -----------------------------------------------------------------------------------

def test_divergence_guard_against_hand_computed_cases():
    guard = guards.DivergenceGuard(loss_factor=10, window=3, norm_growth=5, min_steps=2)
    assert guard.update(1, 1.0) is None and guard.reference_loss() is None
    assert [guard.update(s, x) for s, x in ((2, 0.5), (3, 0.1), (4, 0.1), (5, 0.1))] == [None] * 4
    # running median of the last 3 = 0.1, of the first 3 = 0.5: reference 0.5, bound 5
    assert guard.reference_loss() == 0.5
    assert guard.update(6, 4.9) is None
    assert guard.update(7, 6.0) == "loss 6 is over 10x the running median 0.5"
    assert guard.check_norm(2.0) is None                     # the start
    assert guard.check_norm(10.0) is None and "norm 10.1" in guard.check_norm(10.1)
    assert "norm nan" in guard.check_norm(float("nan"))
    off = guards.DivergenceGuard(loss_factor=0, norm_growth=0)
    assert off.update(1, 1.0) is None and off.update(2, 1.0) is None and off.update(3, 1e30) is None
    assert off.check_norm(1.0) is None and off.check_norm(1e30) is None


def test_a_run_that_diverges_without_a_nan_stops_naming_the_step(reference, tmp_path):
    # Warm-up to a learning rate of 1e3: losses climb to 1e5 and weights to 1e17, all finite.
    config = run_config(**{"train.checkpoint_every_steps": 1})
    config.optimizer.learning_rate = 1e3
    config.optimizer.warmup_steps = 4
    with pytest.raises(errors.DivergenceError) as error:
        train(config, tmp_path)
    stopped = error.value
    assert errors.exit_status(stopped) == errors.EXIT_TRAINING_STOPPED
    assert f"at step {stopped.step}" in str(stopped) and "training diverged" in str(stopped)
    assert stopped.last_good_step == stopped.step - 1 and f"step {stopped.last_good_step}, is kept" in str(stopped)
    steps = checkpointing.StageCheckpoints(tmp_path, 1, read_only=True).manager.all_steps()
    assert max(steps) == stopped.last_good_step              # nothing after the bad step saved
    # the healthy reference run stayed far inside the default bounds
    losses = [json.loads(line)["loss"] for line in (reference / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert max(losses) < 3 * losses[0]


def report_zero(monkeypatch, metric: str) -> None:
    """Every train step runs as it does, and reports ``metric`` as 0 (what a saturated output shows)."""
    from pcam_jax.training import steps as steps_lib

    real = steps_lib.make_train_step

    def zeroed(*args, **kwargs):
        step = real(*args, **kwargs)

        def run(state, *batches):
            state, metrics = step(state, *batches)
            return state, {**metrics, metric: metrics[metric] * 0}
        return run

    monkeypatch.setattr(steps_lib, "make_train_step", zeroed)


def test_dead_gradient_guard_against_hand_computed_cases():
    guard = guards.DeadGradientGuard(steps=3)
    assert [guard.update(i, g) for i, g in enumerate([0.0, 0.0, 0.5, 0.0, 0.0], 1)] == [None] * 5  # run broken at 3
    assert "exactly 0 for the 3 steps to step 6" in guard.update(6, 0.0)
    assert guards.DeadGradientGuard(steps=0).update(1, 0.0) is None   # off


def test_dead_decoder_guard_against_hand_computed_cases():
    guard = guards.DeadDecoderGuard(steps=3, floor=1e-3)
    outputs = [1e-4, 2e-15, 0.4, 0.0, 9e-4]                            # the run broken at step 3 (0.4)
    assert [guard.update(i, d) for i, d in enumerate(outputs, 1)] == [None] * 5
    assert "below 0.001 on every labelled pixel for the 3 steps to step 6" in guard.update(6, 1e-3 - 1e-9)
    assert guards.DeadDecoderGuard(steps=1).update(1, 1e-3) is None     # at the floor is alive: below it counts
    assert guards.DeadDecoderGuard(steps=0).update(1, 0.0) is None     # off


def test_a_stage_whose_decoder_dies_stops_naming_the_step_and_the_fix(tmp_path, monkeypatch):
    # Stage 4 (L3 alone, no earlier stage needed); the step is the real one, only its reported decoder
    # output is scaled to 0, as a saturated decoder's is, while its gradient stays non-zero.
    report_zero(monkeypatch, "decoder_max")
    config = run_config(**{"train.checkpoint_every_steps": 1, "train.log_every_steps": 1,
                           "train.dead_gradient_steps": 3})
    data = FakeData(config)
    data.heldout_mask_batches = lambda limit: None   # no held-out masks: stage 4 keeps its latest
    with pytest.raises(errors.DeadDecoderError) as error:
        loop.train_and_evaluate(config, tmp_path, (4,), data=data, reporter=quiet_reporter(tmp_path))
    stopped = error.value
    assert stopped.step == 3 and errors.exit_status(stopped) == errors.EXIT_TRAINING_STOPPED
    assert "lesion decoder died" in str(stopped) and "balanced_bce" in str(stopped)
    assert max(checkpointing.StageCheckpoints(tmp_path, 4, read_only=True).manager.all_steps()) == 2


def test_a_stage_whose_gradients_vanish_stops_naming_the_step(tmp_path, monkeypatch):
    # The step is the real one; only its reported gradient norm is 0, as a saturated decoder's is.
    report_zero(monkeypatch, "grad_norm")
    config = run_config(**{"train.checkpoint_every_steps": 1, "train.log_every_steps": 1,
                           "train.dead_gradient_steps": 3})
    with pytest.raises(errors.DeadTrainingError) as error:
        train(config, tmp_path)
    stopped = error.value
    assert stopped.step == 3 and errors.exit_status(stopped) == errors.EXIT_TRAINING_STOPPED
    assert "stopped learning" in str(stopped) and "dead_gradient_steps=0" in str(stopped)
    assert max(checkpointing.StageCheckpoints(tmp_path, 1, read_only=True).manager.all_steps()) == 2


# -- one-line errors ------------------------------------------------------------------------------

def test_environment_errors_have_their_own_status_and_one_line():
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/stage1/8")
    wrapped = RuntimeError("async save failed")
    wrapped.__cause__ = full
    assert errors.exit_status(wrapped) == errors.EXIT_ENVIRONMENT
    assert errors.one_line(wrapped) == ("No space left on device: /w/checkpoints/stage1/8; free disk space "
                                        "(or point --workdir at a larger disk), then re-run the same command")
    assert errors.exit_status(PermissionError(errno.EACCES, "Permission denied", "/w")) == errors.EXIT_ENVIRONMENT
    assert errors.exit_status(FileNotFoundError(errno.ENOENT, "No such file", "/w")) == errors.EXIT_BAD_INPUT
    assert errors.exit_status(KeyError("a bug")) is None


def test_an_unknown_config_field_is_one_line_naming_the_field_and_its_siblings(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pcam_jax.cli", "train", "--config", "tiny", "--workdir",
                             str(tmp_path), "--config.model.widht=1"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == errors.EXIT_BAD_INPUT
    assert result.stderr.strip().splitlines() == [
        "pcam-jax train: --config.model.widht=1: config.model has no field 'widht'; did you mean "
        "config.model.widths? its fields: blocks, conv_impl, decoder_widths, dtype, input_mean, input_std, "
        "num_classes, pool_impl, stem_width, strides, widths (all fields and defaults: pcam_jax/configs/base.py)"]


def test_config_override_problem_for_a_section_and_a_nested_field():
    from pcam_jax.cli import process as cli_process

    assert cli_process._config_override_problem(KeyError("'modl'\nDid you mean \"model\"?"), ["--config.modl.widths=1"]) \
        .startswith("--config.modl.widths=1: config has no field 'modl'; did you mean config.model?")
    assert cli_process._config_override_problem(AttributeError("'x'"), ["--workdir=w"]) is None


def test_maps_names_a_folder_without_images(tmp_path):
    from pcam_jax.cli.maps import image_paths

    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=f"no images in the folder {tmp_path} "):
        image_paths([str(tmp_path)])
    assert errors.exit_status(FileNotFoundError()) == errors.EXIT_BAD_INPUT


def test_a_box_with_negative_width_is_called_so():
    from pcam_jax.data.lesions import box_mask

    with pytest.raises(ValueError, match=r"labels.csv line 2: box \(5, 1, 3, 4\) has a negative width \(x1 3 < x0 5\)"):
        box_mask((5, 1, 3, 4), 8, 8, "labels.csv line 2")
    with pytest.raises(ValueError, match=r"negative height \(y1 1 < y0 4\)"):
        box_mask((1, 4, 3, 1), 8, 8, "w")
    np.testing.assert_array_equal(box_mask((1, 2, 3, 4), 5, 5, "w").sum(), 4)   # 2 x 2 pixels


def test_metrics_jsonl_drops_only_the_records_of_steps_re_run(tmp_path):
    from pcam_jax.training import reporting

    path = tmp_path / "metrics.jsonl"
    records = [{"stage": 1, "step": 6}, {"stage": 2, "step": 2}, {"stage": 2, "step": 4}, {"stage": 2, "step": 6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"stage": 2, "st')   # cut by a kill
    assert reporting.drop_records_after(path, stage=2, step=2) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]
