"""The run's fixed cost (mobilenet/infra/startup.py) and the cached digits (infra/digits.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mobilenet.infra import digits, startup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")


def _python(code: str, *, cache_home: str) -> str:
    env = {**os.environ, "XDG_CACHE_HOME": cache_home,
           "PYTHONPATH": os.pathsep.join([EXAMPLES, ROOT])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=120).stdout


_LOAD = ("import sys, numpy as np\n"
         "from mobilenet.infra import digits\n"
         "arrays = digits.load()\n"
         "print('sklearn' in sys.modules, [a.shape for a in arrays], "
         "sum(int(a.astype(np.int64).sum()) for a in arrays))\n")


def test_a_second_process_reads_the_digits_without_importing_sklearn(tmp_path):
    first = _python(_LOAD, cache_home=str(tmp_path))
    second = _python(_LOAD, cache_home=str(tmp_path))
    assert first.startswith("True ") and second.startswith("False ")
    assert first.split(" ", 1)[1] == second.split(" ", 1)[1]
    assert "[(1437, 8, 8), (1437,), (360, 8, 8), (360,)]" in second


def test_the_cached_digits_equal_the_fresh_split(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = digits._split()
    built, cached = digits.load(), digits.load()
    for a, b, c in zip(fresh, built, cached, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        assert a.dtype == b.dtype == c.dtype


def test_a_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    os.makedirs(os.path.dirname(digits.cache_path()))
    with open(digits.cache_path(), "wb") as file:
        file.write(b"PK\x03\x04 not a zip file")
    arrays = digits.load()
    assert arrays[0].shape == (1437, 8, 8)
    with np.load(digits.cache_path()) as saved:  # Rewritten, readable.
        np.testing.assert_array_equal(saved["x_test"], arrays[2])


def test_an_unwritable_cache_folder_still_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    os.makedirs(tmp_path / "jrelu6")
    (tmp_path / "jrelu6" / "data").write_text("a file where the folder should be")
    assert digits.load()[2].shape == (360, 8, 8)


def test_process_seconds_counts_from_the_interpreter_start(tmp_path):
    out = _python("import time\ntime.sleep(0.5)\nfrom mobilenet.infra import startup\n"
                  "print(startup.process_seconds())", cache_home=str(tmp_path))
    assert 0.5 <= float(out) < 60


def test_the_fixed_cost_line_names_each_part():
    line = startup.fixed_cost_line(total=40.0, steps=27.5, compile_seconds=3.31, programs=9,
                                   cache_hits=9, native_build_seconds=12.0)
    assert line == ("40.0 s since the process started: 27.5 s in training steps, 12.5 s "
                    "fixed cost; XLA's compiler 3.3 s (summed over threads) for 9 programs, 9 "
                    "from the persistent cache; native kernels built in 12.0 s")
    assert startup.fixed_cost_line(total=1.0, steps=0.3) == (
        "1.0 s since the process started: 0.3 s in training steps, 0.7 s fixed cost")


def test_the_command_prints_its_fixed_cost(tmp_path):
    env = {**os.environ, "JRELU6_HUGE_PAGES": "0"}
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "train.py"), "--model", "tiny", "--data",
         "synthetic", "--synthetic-examples", "64", "--image-size", "16", "--batch-size", "16",
         "--eval-batch-size", "32", "--steps", "6", "--log-every", "3", "--no-plot",
         "--workdir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[-3]  # Before the results' two lines.
    match = re.fullmatch(r"([\d.]+) s since the process started: ([\d.]+) s in training steps, "
                         r"([\d.]+) s fixed cost; XLA's compiler [\d.]+ s \(summed over threads\) "
                         r"for (\d+) programs, (\d+) from the persistent cache.*", line)
    assert match, result.stdout
    total, steps, fixed = (float(match[i]) for i in (1, 2, 3))
    assert abs(total - steps - fixed) <= 0.11
    with open(tmp_path / "run" / "metrics.jsonl") as file:  # Steps 2-3 and 4-6, as timed.
        rates = [r["images_per_second"] for r in map(json.loads, file) if "step" in r
                 and "images_per_second" in r]
    assert steps == pytest.approx(2 * 16 / rates[0] + 3 * 16 / rates[1], abs=0.051)
    assert int(match[4]) >= 3  # init, train and eval steps at least


def test_the_benchmark_sums_the_steps_as_the_run_timed_them(tmp_path):
    import startup as benchmark  # benchmarks/startup.py

    (tmp_path / "config.json").write_text('{"batch_size": 64}')
    records = [{"step": 25, "images_per_second": 1600.0}, {"step": 50, "test_loss": 1.0},
               {"step": 50, "images_per_second": 800.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    # Steps 2-25 (the first compiles) at 1600 images/s, 26-50 at 800.
    assert benchmark.steps_seconds(str(tmp_path)) == pytest.approx(24 * 64 / 1600 + 25 * 64 / 800)


def test_the_benchmark_times_a_warm_run_phase_by_phase(tmp_path):
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, os.path.join("benchmarks", "startup.py"), "--quick",
                           "--repeats", "1", "--phases", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["phases"]
    timed = {name: (count, seconds) for name, count, seconds in rows}
    assert rows[0][0] == "imports (from the process's start)"
    assert {"steps loaded or compiled, state initialized", "first step", "final save's wait",
            "plot", "exit (after main() returned)"} <= set(timed)
    assert timed["save (its start)"][0] >= 1 and timed["evaluation"][0] >= 1  # The final ones.
    assert all(seconds >= 0 for _, seconds in timed.values())
