"""`pcam-jax prepare`: the MURA command on the dummy tree, its summary, and its failures."""

import pathlib
import shutil

import pytest
from absl import app
from absl import flags

from pcam_jax import cli
from pcam_jax.cli import prepare
from pcam_jax.data import mura

DUMMY = pathlib.Path(mura.__file__).parent / "dummy_data"
FLAGS = flags.FLAGS


@pytest.fixture(autouse=True)
def fresh_flags():
    FLAGS.unparse_flags()
    yield
    FLAGS.unparse_flags()


def run_main(argv):
    """What the dispatcher does under absl's app.run: parse the flags, run the command with the
    known errors mapped to one line on stderr and an exit status (SystemExit)."""
    return cli.run_command("prepare", prepare.main, FLAGS(["pcam-jax prepare"] + argv))


def test_prepare_mura_through_the_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # app.run exits with main's result
        cli.main(["pcam-jax", "prepare", "mura", "--manual-dir", str(DUMMY),
                  "--data-dir", str(tmp_path)])
    assert exit_info.value.code in (None, 0)
    out = capsys.readouterr().out
    data_dir = tmp_path / "mura" / "default" / "1.0.0"
    assert f"in {data_dir}" in out
    table = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
             if line.strip().split()[:1] in (["train"], ["model_selection"], ["valid"])}
    assert table == {"train": 7, "model_selection": 4, "valid": 4}
    assert "patients: train 4, model_selection 2, valid 3" in out
    built = mura.builder(tmp_path)
    assert built.is_prepared()
    assert {k: v.num_examples for k, v in built.info.splits.items()} == table


def test_skip_corrupt_is_reported_in_the_summary(tmp_path, capsys):
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY, manual)
    bad = "MURA-v1.1/train/XR_WRIST/patient00005/study1_negative/image2.png"
    (manual / bad).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(SystemExit) as exit_info:  # default: stop, naming the file
        run_main(["mura", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'a'}"])
    assert exit_info.value.code == 2 and bad in capsys.readouterr().err
    FLAGS.unparse_flags()
    run_main(["mura", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'b'}", "--skip_corrupt"])
    out = capsys.readouterr().out
    assert f"skipped 1 unreadable images (skip_corrupt):\n    {bad}" in out
    assert mura.builder(tmp_path / "b").info.splits["train"].num_examples == 6


@pytest.mark.parametrize("argv, message", [
    (["mura", "--manual_dir=/no/such/folder"], "/no/such/folder does not exist"),
    (["mura"], "--manual_dir is required"),
])
def test_bad_manual_dir_exits_with_bad_input_status_and_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(argv + [f"--data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert err.startswith("pcam-jax prepare: ") and len(err.strip().splitlines()) == 1


def test_incomplete_tree_lists_what_is_missing(tmp_path, capsys):
    (tmp_path / "MURA-v1.1" / "train").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        run_main(["mura", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'out'}"])
    message = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "train_image_paths.csv" in message and "MURA-v1.1/valid" in message
    assert "missing" in message


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(app.UsageError, match="mura,synthetic"):
        run_main(["imagenet"])
