"""The work directory under real faults: a full disk, a second process, preemption.

Each fault hits a real run of the example's tiny model through its command line
(``examples/train.py``), and each test checks the exit code, the one line on
stderr, that no traceback is printed, and that the rerun ends with the metrics of
an uninterrupted run (``metrics.jsonl`` identical but for ``images_per_second``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mobilenet import train, train_state
from mobilenet.configs import get_config
from mobilenet.infra import disk, host_memory, lifecycle, workdir
from mobilenet.infra.background import Background

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "examples", "train.py")
# 12 steps, checkpoints at 4, 8 and 12, metrics fetched every 3 steps (as test_workdir.py).
SETTINGS = {"model": "tiny", "data": "synthetic", "image_size": 16, "batch_size": 16,
            "eval_batch_size": 32, "steps": 12, "log_every": 3, "eval_every": 0,
            "checkpoint_every": 4, "learning_rate": 0.2, "warmup_steps": 0, "progress": False,
            "plot": False}
# A longer run for the signals, so that they arrive during training.
LONG = {"steps": 300, "checkpoint_every": 50}
TIMEOUT = 300


def _args(**overrides):
    settings = {**SETTINGS, **overrides}
    args = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def _cli(run, **overrides):
    return subprocess.run([sys.executable, CLI, *_args(**overrides), "--workdir", str(run)],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _start(run, **overrides):
    return subprocess.Popen([sys.executable, CLI, *_args(**overrides), "--workdir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _said(stderr):
    """stderr's lines, but the huge-pages restart's note (host_memory.NOTE)."""
    return [line for line in stderr.splitlines() if line != host_memory.NOTE]


def _records(run):
    """metrics.jsonl without its timing field."""
    with open(os.path.join(run, workdir.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k != "images_per_second"} for r in records]


def _wait_for(condition, process=None, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _holder_pid(run):
    try:
        with open(os.path.join(run, workdir.LOCK_FILE)) as f:
            return json.load(f)["pid"]
    except (OSError, ValueError):
        return None


def _trained_to(run, step):
    try:
        return any(r.get("step", 0) >= step for r in _records(run))
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """metrics.jsonl of uninterrupted command-line runs, short and long."""
    records = {}
    for name, overrides in (("short", {}), ("long", LONG)):
        run = tmp_path_factory.mktemp("straight") / name
        result = _cli(run, **overrides)
        assert result.returncode == 0, result.stderr
        records[name] = _records(run)
    return records


# --- two processes on one work directory ---------------------------------------------------


@pytest.mark.slow
def test_a_second_process_exits_2_naming_the_first(tmp_path, straight):
    run = tmp_path / "run"
    first = _start(run)
    try:
        _wait_for(lambda: _holder_pid(run) == first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # Holds the lock for as long as the test needs.
        try:
            started = time.monotonic()
            second = _cli(run)
            waited = time.monotonic() - started
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, first_err = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
    assert second.returncode == 2 and second.stdout == ""
    (line,) = _said(second.stderr)
    assert re.fullmatch(rf"error: train: work directory {run} is in use by process {first.pid} "
                        r"on \S+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; wait for it to end, "
                        r"or use another --workdir", line), line
    assert "Traceback" not in second.stderr
    assert waited < TIMEOUT  # It refused instead of waiting for the first to end.
    assert first.returncode == 0, first_err
    assert _records(run) == straight["short"]  # The first run's log alone, not interleaved.


@pytest.mark.slow
def test_a_killed_holder_leaves_no_stale_lock(tmp_path, straight):
    run = tmp_path / "run"
    first = _start(run)
    _wait_for(lambda: _holder_pid(run) == first.pid, first)
    first.kill()  # SIGKILL: no handler runs, the kernel drops the lock.
    first.communicate()
    result = _cli(run)
    assert result.returncode == 0, result.stderr
    assert _said(result.stderr) == [] and _records(run) == straight["short"]


def test_the_lock_is_held_for_the_block_only(tmp_path):
    work = workdir.Workdir(str(tmp_path / "run"))
    with work.lock(), pytest.raises(workdir.WorkdirBusy,
                                    match=f"in use by process {os.getpid()} "), work.lock():
        pass  # The second lock is another open file: refused as another process would be.
    with work.lock():
        pass


def test_only_process_0_takes_the_lock(tmp_path, monkeypatch):
    work = workdir.Workdir(str(tmp_path / "run"))
    monkeypatch.setattr(lifecycle.jax, "process_index", lambda: 1)
    with lifecycle.locked(work):
        assert not os.path.exists(work.lock_file)


# --- preemption ----------------------------------------------------------------------------


def _preempted_step(stderr, run):
    (line,) = _said(stderr)
    match = re.fullmatch(rf"preempted: saved a checkpoint at step (\d+) in {run}/checkpoints; "
                         "run the same command again to resume from it", line)
    assert match, line
    return int(match.group(1))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_143_and_the_rerun_resumes(tmp_path, straight):
    run = tmp_path / "run"
    process = _start(run, **LONG)
    _wait_for(lambda: _trained_to(run, 3), process)
    process.terminate()
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143 and "Traceback" not in stderr
    step = _preempted_step(stderr, run)
    assert 3 <= step < LONG["steps"]
    assert str(step) in os.listdir(run / "checkpoints")
    assert not glob.glob(str(run / "checkpoints" / "*tmp*"))
    result = _cli(run, **LONG)
    assert result.returncode == 0, result.stderr
    assert _records(run) == straight["long"]


def _config(**overrides):
    return get_config(**{**SETTINGS, **overrides})


def _signal_at(call, monkeypatch):
    """Makes the train step send this process SIGTERM during its ``call``-th call."""
    make = train_state.make_train_step

    def make_signalling(**options):
        step, count = make(**options), [0]

        def signalling(state, batch):
            count[0] += 1
            if count[0] == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(state, batch)

        return signalling

    monkeypatch.setattr(train_state, "make_train_step", make_signalling)


@pytest.mark.slow
def test_sigterm_just_after_an_asynchronous_save_keeps_it_and_saves_the_next(tmp_path,
                                                                            monkeypatch):
    straight_result = train.train_and_evaluate(_config(), str(tmp_path / "straight"))
    run = str(tmp_path / "run")
    hooks = sys.excepthook, sys.unraisablehook, logging.getLogger("absl").filters[:]
    with monkeypatch.context() as patch:
        _signal_at(5, patch)  # Checkpoint 4 is still being written in the background.
        with pytest.raises(lifecycle.Preempted, match="saved a checkpoint at step 5 in"):
            train.train_and_evaluate(_config(), run)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Put back,
    assert (sys.excepthook, sys.unraisablehook, logging.getLogger("absl").filters) == hooks  # and
    # nothing else of the process's was changed.
    assert sorted(os.listdir(os.path.join(run, workdir.CHECKPOINT_SUBDIR))) == ["4", "5"]
    resumed = train.train_and_evaluate(_config(), run)
    assert resumed["resumed_from"] == 5
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
        assert resumed[key] == straight_result[key], key
    assert _records(run) == _records(str(tmp_path / "straight"))


def test_after_ctrl_c_the_compile_threads_are_waited_for_and_said_so(capsys):
    handler = signal.getsignal(signal.SIGINT)
    seen = []
    task = Background(lambda: [time.sleep(0.3), seen.append(signal.getsignal(signal.SIGINT))])
    Background.settle([task], interrupted=True)
    assert seen == [signal.SIG_DFL]  # A second Ctrl-C while waiting ends the process at once.
    assert signal.getsignal(signal.SIGINT) is handler and task.result() == [None, None]
    assert capsys.readouterr().err == ("waiting for XLA's compiler to return before exiting "
                                       "(Ctrl-C again: exit at once)\n")


# --- a full disk ---------------------------------------------------------------------------


class _Killed(Exception):
    """Stands for the process dying in the middle of training."""


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A work directory whose run died at step 10: checkpoints 4 and 8, metrics to step 9."""
    run = str(tmp_path_factory.mktemp("killed") / "run")
    make = train_state.make_train_step

    def make_mortal(**options):
        step, count = make(**options), [0]

        def mortal(state, batch):
            count[0] += 1
            if count[0] > 9:
                raise _Killed
            return step(state, batch)

        return mortal

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_state, "make_train_step", make_mortal)
        with pytest.raises(_Killed):
            train.train_and_evaluate(_config(), run)
    return run


def _files(directory):
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return found


@contextlib.contextmanager
def _small_filesystem(directory, size="4m"):
    """A size-limited tmpfs at ``directory`` (skips the test where it cannot be mounted)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (the injected fault is tested below)")
    os.makedirs(directory)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(directory)], capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def _fill(directory, leave):
    """Fills the file system of ``directory`` but ``leave`` bytes; returns the filler's path."""
    path = os.path.join(directory, "filler")
    stat = os.statvfs(directory)
    with open(path, "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return path


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_exits_3_and_the_rerun_resumes(tmp_path, killed,
                                                                       straight):
    disk_dir = tmp_path / "disk"
    with _small_filesystem(disk_dir):
        run = disk_dir / "run"
        shutil.copytree(killed, run)
        kept = _files(run / "checkpoints" / "8")
        filler = _fill(disk_dir, leave=16 * 1024)  # Room for the small files, not a step.
        result = _cli(run)
        assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
        (line,) = _said(result.stderr)
        assert re.fullmatch(
            r"error: train: no space left on device \(0\.0 MiB free, the checkpoint needs "
            rf"about \d+\.\d MiB\) while writing {run}/checkpoints/12; the newest complete "
            rf"checkpoint is step 8 in {run}/checkpoints; free some space and run the same "
            "command again to resume from it", line), line
        assert _files(run / "checkpoints" / "8") == kept
        assert not glob.glob(str(run / "checkpoints" / "*tmp*"))
        _records(run)  # Every line is whole.
        os.remove(filler)
        rerun = _cli(run)
        assert rerun.returncode == 0, rerun.stderr
        assert _records(run) == straight["short"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["metrics", "config", "checkpoint"])
def test_a_full_disk_injected_where_the_example_writes(tmp_path, killed, straight, where,
                                                       monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cli", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    before = _files(run / "checkpoints")
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "metrics":  # The write of step 12's record fails half way.
        real_write = os.write

        def write(fd, data):
            if b'"step": 12' in data:
                real_write(fd, data[:10])
                raise no_space
            return real_write(fd, data)

        monkeypatch.setattr(disk.os, "write", write)
        path = f"{run}/metrics.jsonl"
    elif where == "config":
        real_replace = os.replace

        def replace(source, target):
            if target.endswith(workdir.CONFIG_FILE):
                raise no_space
            return real_replace(source, target)

        monkeypatch.setattr(disk.os, "replace", replace)
        path = f"{run}/{workdir.CONFIG_FILE}"
    else:  # As orbax reports a failed write from its threads.
        import orbax.checkpoint as ocp

        def save(self, step, *args, **kwargs):
            raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in {run}: No space left on "
                             "device [os_error_code='28']")

        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
        path = f"{run}/checkpoints/12"
    # No persistent compilation cache: it would stay switched on in this process.
    args = [*_args(), "--no-compilation-cache", "--workdir", str(run)]
    code = cli.main(args)
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 3 and "Traceback" not in captured.err
    (line,) = _said(captured.err)
    assert line.startswith(f"error: train: no space left on device while writing {path}; "
                           f"the newest complete checkpoint is step 8 in {run}/checkpoints"), line
    assert _files(run / "checkpoints") == before
    assert _records(run)[-1]["step"] <= 12
    assert cli.main(args) == 0
    assert _records(run) == straight["short"]


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    disk.append_line(path, "first")
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "write", half_then_full)
    with pytest.raises(disk.WriteFailed, match=f"no space left on device while writing {path}"):
        disk.append_line(path, "second")
    monkeypatch.undo()
    with open(path) as f:
        assert f.read() == "first\n"


# --- preemption of a multi-process run -----------------------------------------------------

# Cluster variables of the machine running the tests must not leak into the launches.
FOREIGN = ("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
           "JAX_LOCAL_DEVICE_IDS", "KUBERNETES_SERVICE_HOST")


def _cluster(processes):
    """The environments of ``processes`` processes of one JAX cluster on this machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(FOREIGN) and "proxy" not in k.lower()}
    return [{**base, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
             "JAX_COORDINATOR_ADDRESS": address, "JAX_COORDINATOR_BIND_ADDRESS": address,
             "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i),
             "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"} for i in range(processes)]


def _launch(run, environments):
    args = [sys.executable, CLI, *_args(**LONG), "--distributed", "--workdir", str(run)]
    return [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for env in environments]


@pytest.mark.slow
def test_sigterm_to_one_process_of_a_cluster_saves_one_step_in_all(tmp_path):
    run = tmp_path / "run"
    processes = _launch(run, _cluster(2))
    try:
        _wait_for(lambda: _trained_to(run, 3), processes[0])
        processes[1].terminate()  # The notice reaches one process; JAX tells the other.
        outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [143, 143], outputs
    # JAX's C++ runtime logs "SIGTERM caught" in the process that got the signal
    # (glog format: "W1206 01:19:15.134032 ... preemption_notifier.cc:90] ...").
    ours = ["\n".join(line for line in err.splitlines() if not re.match(r"[IWE]\d{4} ", line))
            for _, err in outputs]
    assert "Traceback" not in "".join(ours)
    steps = {_preempted_step(err, run) for err in ours}
    assert len(steps) == 1  # Every process stopped after the same step...
    (step,) = steps
    assert str(step) in os.listdir(run / "checkpoints")  # ...and saved it, together.
    processes = _launch(run, _cluster(2))
    outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    train_steps = [r["step"] for r in _records(run) if "train_loss" in r]
    assert train_steps == list(range(3, LONG["steps"] + 1, 3))
