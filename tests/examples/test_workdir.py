"""The work directory under damage: real runs of the tiny model, the damage done by the test.

Every run here is the same 12-step configuration (checkpoints at 4, 8 and 12,
metrics fetched every 3 steps), so the compiled steps are shared. A run killed
at step 10 leaves checkpoints 4 and 8; the tests damage that directory and
check that the next run says what happened, loses nothing it did not have to,
and ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from mobilenet import train, train_state
from mobilenet.configs import get_config
from mobilenet.infra import host_memory, lifecycle, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "examples", "train.py")
RESULT_KEYS = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps")
# The command line of _config().
CLI_ARGS = ("--model", "tiny", "--data", "synthetic", "--image-size", "16", "--batch-size", "16",
            "--eval-batch-size", "32", "--steps", "12", "--log-every", "3", "--eval-every", "0",
            "--checkpoint-every", "4", "--learning-rate", "0.2", "--warmup-steps", "0",
            "--no-progress", "--no-plot")


def _config(**overrides):
    settings = dict(model="tiny", data="synthetic", image_size=16, batch_size=16,
                    eval_batch_size=32, steps=12, log_every=3, eval_every=0, checkpoint_every=4,
                    learning_rate=0.2, warmup_steps=0, progress=False, plot=False)
    settings.update(overrides)
    return get_config(**settings)


class _Killed(Exception):
    """Stands for the process dying (SIGKILL) in the middle of training."""


def _stop_after(calls, monkeypatch, error=_Killed):
    """Makes the train step raise ``error`` after ``calls`` steps."""
    make = train_state.make_train_step

    def make_mortal(**options):
        step, count = make(**options), [0]

        def mortal(state, batch):
            count[0] += 1
            if count[0] > calls:
                raise error
            return step(state, batch)

        return mortal

    monkeypatch.setattr(train_state, "make_train_step", make_mortal)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run's results."""
    return train.train_and_evaluate(_config(), str(tmp_path_factory.mktemp("straight")))


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A work directory whose run was killed at step 10: checkpoints 4 and 8."""
    run = str(tmp_path_factory.mktemp("killed") / "run")
    with pytest.MonkeyPatch.context() as patch:
        _stop_after(9, patch)
        with pytest.raises(_Killed):
            train.train_and_evaluate(_config(), run)
    assert sorted(os.listdir(os.path.join(run, workdir.CHECKPOINT_SUBDIR))) == ["4", "8"]
    return run


@pytest.fixture
def run(killed, tmp_path):
    """A fresh copy of the killed run's work directory."""
    copy = str(tmp_path / "run")
    shutil.copytree(killed, copy)
    return copy


def _snapshot(directory):
    """Every file under ``directory`` and its bytes (but the lock file, which a run rewrites
    when it takes the lock: its process id and start time)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            if name == workdir.LOCK_FILE:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def _train_records(run):
    with open(os.path.join(run, workdir.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _assert_finishes_like(result, straight, run):
    for key in RESULT_KEYS:
        assert result[key] == straight[key], key
    train_steps = [r["step"] for r in _train_records(run) if "train_loss" in r]
    assert train_steps == [3, 6, 9, 12]


# --- damaged checkpoints -------------------------------------------------------------------


def _data_files(step_dir):
    """The array data files of a step (orbax keeps a merged copy of the per-process ones)."""
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    assert files
    return files


def _empty(path):
    open(path, "wb").close()


def _garble(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + 32] = bytes(b ^ 0x5A for b in data[middle:middle + 32])
        f.seek(0)
        f.write(data)


DAMAGE = {
    "data files emptied": lambda step: [_empty(path) for path in _data_files(step)],
    "data files garbled": lambda step: [_garble(path) for path in _data_files(step)],
    "metadata garbled": lambda step: _garble(os.path.join(step, "state", "_METADATA")),
    "manifest missing": lambda step: os.remove(os.path.join(step, "state", "manifest.ocdbt")),
    "record garbled": lambda step: _garble(os.path.join(step, "meta", "metadata")),
}


# A failed orbax read leaves tensorstore callbacks that fire later on a closed event
# loop ("Exception ignored ... Event loop is closed"). The checkpoint code keeps them off
# stderr while it waits for them; on a loaded machine a straggler can come later and
# reach pytest, which would turn it into an error. They are the libraries' noise, not a
# result: the tests below assert what the run says and does.
ORBAX_STRAGGLERS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_STRAGGLERS
@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        run, straight, damage, capsys):
    DAMAGE[damage](os.path.join(run, workdir.CHECKPOINT_SUBDIR, "8"))
    result = train.train_and_evaluate(_config(), run)
    assert result["resumed_from"] == 4
    _assert_finishes_like(result, straight, run)
    err = capsys.readouterr().err
    aside = os.path.join(run, workdir.DAMAGED_SUBDIR, "8")
    assert "the checkpoint of step 8 is damaged" in err and f"moved it to {aside}" in err
    assert "resuming from step 4" in err and "Traceback" not in err
    assert os.listdir(aside)  # Kept, not deleted.


@ORBAX_STRAGGLERS
@pytest.mark.slow
def test_a_step_whose_write_was_cut_short_is_ignored(run, straight):
    # orbax writes a step into a temporary directory and renames it when complete:
    # a kill during an asynchronous save leaves only the temporary directory.
    checkpoints = os.path.join(run, workdir.CHECKPOINT_SUBDIR)
    partial = os.path.join(checkpoints, "12.orbax-checkpoint-tmp-1700000000")
    shutil.copytree(os.path.join(checkpoints, "8"), partial)
    for path in _data_files(partial):
        _empty(path)
    result = train.train_and_evaluate(_config(), run)
    assert result["resumed_from"] == 8
    _assert_finishes_like(result, straight, run)


@ORBAX_STRAGGLERS
@pytest.mark.slow
def test_when_every_checkpoint_is_damaged_the_run_starts_again(run, straight, capsys):
    for step in ("4", "8"):
        DAMAGE["data files emptied"](os.path.join(run, workdir.CHECKPOINT_SUBDIR, step))
    result = train.train_and_evaluate(_config(), run)
    assert result["resumed_from"] == 0
    _assert_finishes_like(result, straight, run)
    assert "no intact checkpoint is left: starting from step 0" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(run, workdir.DAMAGED_SUBDIR))) == ["4", "8"]


# --- the metrics log -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_metrics_log_cut_mid_line_is_repaired_on_resume(run, straight, capsys):
    with open(os.path.join(run, workdir.METRICS_FILE), "a") as f:
        f.write('{"step": 10, "train_lo')  # The kill came in the middle of this write.
    result = train.train_and_evaluate(_config(), run)
    assert result["resumed_from"] == 8
    _assert_finishes_like(result, straight, run)
    assert "dropped the last line" in capsys.readouterr().err


def test_a_damaged_line_before_the_last_is_refused_and_the_log_kept(run):
    path = os.path.join(run, workdir.METRICS_FILE)
    with open(path) as f:
        lines = f.readlines()
    lines[0] = lines[0][:10] + "\n"
    with open(path, "w") as f:
        f.writelines(lines)
    before = _snapshot(run)
    with pytest.raises(lifecycle.SetupError, match="line 1 is not a JSON record"):
        train.train_and_evaluate(_config(), run)
    assert _snapshot(run) == before


# --- refusals before anything is written ---------------------------------------------------


def test_deleted_checkpoints_with_metrics_left_are_refused_and_nothing_changes(run):
    shutil.rmtree(os.path.join(run, workdir.CHECKPOINT_SUBDIR))
    before = _snapshot(run)
    with pytest.raises(lifecycle.SetupError, match=r"has metrics\.jsonl but no checkpoints/"):
        train.train_and_evaluate(_config(), run)
    assert _snapshot(run) == before


def _a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    return str(path)


@pytest.mark.parametrize("make, fragment", [
    (_a_file, "is a file, not a directory"),
    (lambda tmp_path: os.path.join(_a_file(tmp_path), "run"), "is a file, not a directory"),
])
def test_a_work_directory_that_is_a_file_is_refused_before_the_data_is_read(tmp_path, make,
                                                                            fragment):
    path = make(tmp_path)
    # No --data-dir: were the data read first, this would be a DataError.
    with pytest.raises(lifecycle.SetupError, match=fragment):
        train.train_and_evaluate(_config(data="cifar10"), path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permission bits do not stop root (or non-POSIX systems)")
@pytest.mark.parametrize("inner", ["", "run"])
def test_a_read_only_work_directory_is_refused_before_the_data_is_read(tmp_path, inner):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(lifecycle.SetupError, match="cannot write in"):
            train.train_and_evaluate(_config(data="cifar10"), str(directory / inner))
    finally:
        directory.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_work_directory_on_a_read_only_file_system_is_refused():
    # Not even root can create files in /proc.
    with pytest.raises(lifecycle.SetupError, match="cannot write in /proc"):
        train.train_and_evaluate(_config(data="cifar10"), "/proc/self/jrelu6-run")


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [dict(seed=1), dict(batch_size=32), dict(num_classes=12)],
                         ids=["seed", "batch_size", "num_classes"])
def test_resuming_with_other_settings_is_refused_and_nothing_changes(run, overrides):
    before = _snapshot(run)
    with pytest.raises(lifecycle.SetupError, match="other settings"):
        train.train_and_evaluate(_config(**overrides), run)
    assert _snapshot(run) == before


def test_a_checkpoint_of_another_model_is_refused_without_a_saved_config(run):
    os.remove(os.path.join(run, workdir.CONFIG_FILE))  # Nothing to compare the settings with.
    before = _snapshot(run)
    with pytest.raises(lifecycle.SetupError, match=r"step 8 .* holds other arrays .*\(10,\)"):
        train.train_and_evaluate(_config(num_classes=12), run)
    assert _snapshot(run) == before


# --- Ctrl-C --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("calls, says", [
    (2, "no checkpoint was saved yet in .*; run the same command again to start again"),
    (6, r"the last checkpoint \(step 4\) is kept in .*; run the same command again to resume"),
])
def test_ctrl_c_says_what_a_rerun_starts_from(tmp_path, monkeypatch, calls, says):
    _stop_after(calls, monkeypatch, KeyboardInterrupt)
    with pytest.raises(lifecycle.Interrupted, match=says):
        train.train_and_evaluate(_config(), str(tmp_path / "run"))


# --- the command line ----------------------------------------------------------------------


def _cli(*args, cwd):
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _said(result):
    """The command's stderr without the huge-pages note (host_memory.NOTE)."""
    return "".join(line for line in result.stderr.splitlines(keepends=True)
                   if line.rstrip("\n") != host_memory.NOTE)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A work directory of a finished run of the command line."""
    run = str(tmp_path_factory.mktemp("cli") / "run")
    result = _cli(*CLI_ARGS, "--workdir", run, cwd=os.path.dirname(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.slow
@pytest.mark.parametrize("setup, extra, fragment", [
    (lambda run: shutil.rmtree(os.path.join(run, workdir.CHECKPOINT_SUBDIR)), (),
     "no checkpoints/"),
    (lambda run: None, ("--seed", "1"), "--seed: the run used 0, now 1"),
    (lambda run: None, ("--batch-size", "32"), "--batch-size: the run used 16, now 32"),
], ids=["checkpoints deleted", "another seed", "another batch size"])
def test_the_command_line_refuses_a_work_directory_with_exit_2_and_no_traceback(
        cli_run, tmp_path, setup, extra, fragment):
    run = str(tmp_path / "run")
    shutil.copytree(cli_run, run)
    setup(run)
    before = _snapshot(run)
    result = _cli(*CLI_ARGS, *extra, "--workdir", run, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert _said(result).startswith("error: train:") and fragment in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert _snapshot(run) == before


def test_the_command_line_refuses_a_file_as_work_directory_with_exit_2(tmp_path):
    result = _cli(*CLI_ARGS, "--workdir", _a_file(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert _said(result).count("\n") == 1 and "is a file, not a directory" in result.stderr
