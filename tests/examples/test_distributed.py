"""Multi-process training through the command line: ``examples/train.py --distributed``.

Two processes on this machine form one JAX cluster: ``jax.distributed`` with its
coordinator on 127.0.0.1 (a free port), JAX's CPU collectives (gloo) between
the processes, and two forced host devices in each. They must train like one
process with four devices: the same global batch over the same number of devices.
Everything goes through the public command line, as a user launches it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "examples", "train.py")
# The tiny model on the bundled digits: 6 steps of a global batch of 32, a
# checkpoint at steps 3 and 6, the training loss of every step in metrics.jsonl,
# one evaluation (360 test images in three batches of 120) at the end.
RUN = ("--model", "tiny", "--steps", "6", "--batch-size", "32", "--eval-batch-size", "120",
       "--lr", "0.2", "--log-every", "1", "--eval-every", "0", "--checkpoint-every", "3")
NUM_TEST = 360
DEVICES = 4  # In all: one process with 4, or two processes with 2 each.
TIMEOUT = 420  # Seconds per launch; a launch compiles for 15-60 s on a loaded 2-core CPU.
# The two runs compute the same sums, but the cross-device reductions (XLA's
# within one process, gloo's between processes) may add in a different order:
# float32 rounding, about 1e-7 relative per reduction, compounded over 6 steps
# (measured: at most 2.4e-7 apart). A wrong data share, unsynchronized gradients or
# per-process batch-norm statistics move the loss by 1e-3 or more (a learning rate
# of 0.05 instead of 0.2 already moves step 2's by 2.5e-3).
RTOL = 1e-5
# Cluster variables of the machine running the tests must not leak into the launches.
FOREIGN = ("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
           "JAX_LOCAL_DEVICE_IDS", "KUBERNETES_SERVICE_HOST")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(devices: int, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(FOREIGN) and "proxy" not in k.lower()}
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **variables)
    return env


def _launch(workdir, *, processes: int, log_dir, name: str) -> list[str]:
    """Runs the CLI in ``processes`` processes (``--distributed`` when more than one).

    Each process's stdout and stderr go to ``log_dir/<name>.<process>.out|err``.

    Returns:
      Each process's stdout. Fails the test if a process exits non-zero (the
      others are then killed) or the launch outlives :data:`TIMEOUT` (all killed).
    """
    args = [sys.executable, CLI, *RUN, "--workdir", str(workdir)]
    if processes == 1:
        environments = [_environment(DEVICES)]
    else:
        address = f"127.0.0.1:{_free_port()}"
        args.append("--distributed")
        environments = [_environment(
            DEVICES // processes, JAX_COORDINATOR_ADDRESS=address,
            JAX_COORDINATOR_BIND_ADDRESS=address,  # Not the default [::]: loopback only.
            JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i),
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo") for i in range(processes)]
    logs = [(os.path.join(log_dir, f"{name}.{i}.out"), os.path.join(log_dir, f"{name}.{i}.err"))
            for i in range(processes)]
    running = []
    try:
        for env, (out, err) in zip(environments, logs):
            with open(out, "w") as stdout, open(err, "w") as stderr:
                running.append(subprocess.Popen(args, cwd=log_dir, env=env, stdout=stdout,
                                                stderr=stderr))
        deadline = time.monotonic() + TIMEOUT
        while (time.monotonic() < deadline and any(p.poll() is None for p in running)
               and not any(p.returncode for p in running)):
            time.sleep(0.2)
    finally:
        codes = [process.poll() for process in running]
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = []
    for out, _ in logs:
        with open(out) as f:
            outputs.append(f.read())
    if codes != [0] * processes:
        tails = []
        for i, (_, err) in enumerate(logs):
            with open(err) as f:
                tails.append(f"--- process {i} stderr:\n{f.read()[-3000:]}")
        pytest.fail(f"{name}: exit codes {codes} (None: killed after another failed or "
                    f"after {TIMEOUT} s)\n"
                    + "\n".join(tails))
    return outputs


def _records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(records) -> tuple[dict[int, float], dict[str, float]]:
    """Per-step training losses, and the final test metrics."""
    train = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    (test,) = [r for r in records if "test_loss" in r]
    return train, test


@pytest.mark.slow
def test_two_processes_train_like_one_write_once_and_resume(tmp_path):
    _launch(tmp_path / "one", processes=1, log_dir=tmp_path, name="one")
    two = _launch(tmp_path / "two", processes=2, log_dir=tmp_path, name="two")

    # The same losses as one process with the same global batch and device count.
    reference, reference_test = _losses(_records(tmp_path / "one"))
    records = _records(tmp_path / "two")
    train, test = _losses(records)
    assert sorted(train) == list(range(1, 7))
    np.testing.assert_allclose([train[s] for s in range(1, 7)],
                               [reference[s] for s in range(1, 7)], rtol=RTOL)
    np.testing.assert_allclose(test["test_loss"], reference_test["test_loss"], rtol=RTOL)
    # A near-tie between two logits could flip one of the 360 predictions.
    assert abs(test["test_accuracy"] - reference_test["test_accuracy"]) <= 1.01 / NUM_TEST

    # Written once: every record once (two writers would append each twice), one
    # checkpoint per step; only process 0 reports progress.
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 6]
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]
    assert {"config.json", "metrics.png"} <= set(os.listdir(tmp_path / "two"))
    status = ("4 cpu device(s)", "initialized and compiled", "wrote ")
    assert all(line in two[0] for line in status), two[0]
    assert not any(line in two[1] for line in status), two[1]
    # Every process ends with the results (gloo may print connection lines before).
    assert [line.split(",")[0] for line in two[1].splitlines()[-2:]] == [
        f"test loss {test['test_loss']:.4f}",
        f"final test accuracy: {test['test_accuracy']:.4f}"], two[1]

    # Resume: as if the job had been killed after writing step 3's checkpoint.
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "6")
    resumed = _launch(tmp_path / "two", processes=2, log_dir=tmp_path, name="resumed")
    assert "resuming from step 3" in resumed[0]
    resumed_records = _records(tmp_path / "two")
    assert [r["step"] for r in resumed_records] == [1, 2, 3, 4, 5, 6, 6]
    resumed_train, resumed_test = _losses(resumed_records)
    np.testing.assert_allclose([resumed_train[s] for s in range(1, 7)],
                               [train[s] for s in range(1, 7)], rtol=RTOL)
    np.testing.assert_allclose(resumed_test["test_loss"], test["test_loss"], rtol=RTOL)
    assert abs(resumed_test["test_accuracy"] - test["test_accuracy"]) <= 1.01 / NUM_TEST
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]


@pytest.mark.parametrize("variables, message", [
    ({}, "train: --distributed: "),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "first"}, "train: JAX_PROCESS_ID must be an integer, got 'first'."),
], ids=["no-cluster", "bad-process-id"])
def test_distributed_without_a_cluster_exits_2_with_one_line(tmp_path, variables, message):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, CLI, "--distributed", "--model", "tiny",
                             "--workdir", str(workdir)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT, env=_environment(1, **variables))
    assert result.returncode == 2, result.stderr
    from mobilenet.infra import host_memory  # Its restart says so in one line of its own.

    lines = [line for line in result.stderr.splitlines() if line != host_memory.NOTE]
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not workdir.exists()
