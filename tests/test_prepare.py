"""`pcam-jax prepare`: the MURA command on the dummy tree, its summary, and its failures."""

import pathlib
import shutil

import pytest
from absl import app
from absl import flags

from pcam_jax import cli
from pcam_jax.cli import process as cli_process
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
    return cli_process.run_command("prepare", prepare.main, FLAGS(["pcam-jax prepare"] + argv))


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
    with pytest.raises(app.UsageError, match="mura,fracatlas,synthetic,folder"):
        run_main(["imagenet"])


def test_prepare_builds_the_uint8_cache_that_training_reads_and_a_new_size_is_another(tmp_path, capsys, monkeypatch):
    from pcam_jax.data import uint8_cache
    from tests.commands import pcam_jax_command

    data = tmp_path / "data"
    prepare_tiny = ("prepare", "synthetic", "--config", "tiny", "--data_dir", data)
    assert pcam_jax_command(*prepare_tiny) == 0                     # augment_on=host: nothing to store
    assert "uint8 cache: not built" in capsys.readouterr().out
    assert not (data / "pcam_jax_uint8").exists()

    FLAGS.unparse_flags()
    assert pcam_jax_command(*prepare_tiny, "--config.data.augment_on=device") == 0
    out = capsys.readouterr().out
    directory = data / "pcam_jax_uint8" / "synthetic-train-32px-stretch"
    assert f"uint8 cache (built now): {directory}\n" in out
    assert "train: 48 images at 32 px, resize stretch" in out and " MiB" in out
    assert uint8_cache.SplitCache(directory).images.shape == (48, 32, 32)
    stamp = (directory / "meta.json").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the uint8 cache was built again")

    read = []
    train_batches = uint8_cache.train_batches

    def recorded(config, cache, **kwargs):
        read.append(cache.directory)
        return train_batches(config, cache, **kwargs)

    with monkeypatch.context() as patch:   # training reads what prepare stored
        patch.setattr(uint8_cache, "build", no_rebuild)
        patch.setattr(uint8_cache, "train_batches", recorded)
        FLAGS.unparse_flags()
        assert pcam_jax_command("train", "--config", "tiny", "--data_dir", data, "--workdir", tmp_path / "run",
                                "--stages", "1", "--config.data.augment_on=device",
                                "--config.train.image_summary_every_steps=0") == 0
        assert read == [directory]
        FLAGS.unparse_flags()
        assert pcam_jax_command(*prepare_tiny, "--uint8_cache") == 0
        assert f"uint8 cache (already current, kept): {directory}\n" in capsys.readouterr().out
    assert (directory / "meta.json").stat().st_mtime_ns == stamp

    FLAGS.unparse_flags()   # another training size is another cache; the first one stays as it was
    assert pcam_jax_command(*prepare_tiny, "--uint8_cache", "--config.data.image_size=24") == 0
    other = data / "pcam_jax_uint8" / "synthetic-train-24px-stretch"
    assert f"uint8 cache (built now): {other}\n" in capsys.readouterr().out
    assert uint8_cache.SplitCache(other).images.shape == (48, 24, 24)
    assert (directory / "meta.json").stat().st_mtime_ns == stamp
    # the same directory name with another resize mode or other lesion labels is stale: rebuilt
    from pcam_jax import configs

    config = configs.get_config("tiny")
    assert uint8_cache.is_current(directory, uint8_cache.cache_key(config, "train", 48))
    config.data.resize = "pad"
    assert not uint8_cache.is_current(directory, uint8_cache.cache_key(config, "train", 48))
    config.data.resize = "stretch"
    labels = tmp_path / "boxes.csv"
    labels.write_text("path,x0,y0,x1,y1\n")
    config.stage3.lesion_labels = str(labels)
    assert not uint8_cache.is_current(directory, uint8_cache.cache_key(config, "train", 48))
