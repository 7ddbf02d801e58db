"""mobilenet.study: the grid harness (resume, divergence, stop) and its statistics."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest

from mobilenet import study
from mobilenet.infra.lifecycle import TrainingDiverged

CONFIG = {"model": "tiny", "steps": 3}


def fake_run(cell: study.Cell) -> dict[str, float]:
    """A deterministic 'accuracy' from the settings and the seed."""
    return {"test_accuracy": 0.5 + 0.1 * cell.key["arm"] + 0.01 * cell.seed}


def cells(seeds=3) -> list[study.Cell]:
    return study.grid([{"arm": 0}, {"arm": 1}], range(seeds))


def test_a_tiny_grid_runs_every_cell_once_and_writes_a_line_each(tmp_path):
    results = study.run_grid(cells(), fake_run, results=study.Results(str(tmp_path), CONFIG),
                             log=lambda _: None)
    lines = (tmp_path / study.RUNS_FILE).read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert (first["key"], first["seed"], first["status"]) == ({"arm": 0}, 0, "ok")
    assert results.values({"arm": 1}, "test_accuracy") == pytest.approx(
        {0: 0.6, 1: 0.61, 2: 0.62})


def test_grid_is_seed_major():
    assert [(c.key["arm"], c.seed) for c in cells(2)] == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_a_rerun_skips_the_finished_cells(tmp_path):
    grid = cells()
    study.run_grid(grid[:4], fake_run, results=study.Results(str(tmp_path), CONFIG),
                   log=lambda _: None)
    ran = []

    def counting(cell):
        ran.append(cell)
        return fake_run(cell)

    logged = []
    results = study.run_grid(grid, counting, results=study.Results(str(tmp_path), CONFIG),
                             log=logged.append)
    assert ran == grid[4:]
    assert logged[0].startswith("resuming: 4 of 6 cells")
    assert len(results.records) == 6
    assert len((tmp_path / study.RUNS_FILE).read_text().splitlines()) == 6


def test_a_torn_last_line_is_dropped_and_that_cell_runs_again(tmp_path):
    study.run_grid(cells(1), fake_run, results=study.Results(str(tmp_path), CONFIG),
                   log=lambda _: None)
    path = tmp_path / study.RUNS_FILE
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][:20])  # Killed while writing line 2.
    results = study.Results(str(tmp_path), CONFIG)
    assert list(results.records) == [cells(1)[0].id]
    assert path.read_text() == lines[0] + "\n"


def test_a_file_of_another_grid_configuration_is_refused(tmp_path):
    study.run_grid(cells(1), fake_run, results=study.Results(str(tmp_path), CONFIG),
                   log=lambda _: None)
    with pytest.raises(study.StudyError, match="another grid configuration"):
        study.Results(str(tmp_path), {**CONFIG, "steps": 4})


def test_diverged_and_skipped_cells_are_recorded_and_the_grid_goes_on(tmp_path):
    def diverging(cell):
        if cell.key["arm"] == 1 and cell.seed == 0:
            raise TrainingDiverged("train: the loss or gradient became NaN/inf at step 67; "
                                   "stopped")
        if cell.key["arm"] == 1 and cell.seed == 1:
            return {"test_accuracy": math.nan}
        if cell.key["arm"] == 0 and cell.seed == 2:
            raise study.Skip("its float run diverged")
        return fake_run(cell)

    results = study.run_grid(cells(), diverging, results=study.Results(str(tmp_path), CONFIG),
                             log=lambda _: None)
    assert len(results.records) == 6
    first, second = (results.get(study.Cell({"arm": 1}, s)) for s in (0, 1))
    assert (first["status"], first["step"]) == ("diverged", 67)
    assert (second["status"], second["step"]) == ("diverged", None)
    skipped = results.get(study.Cell({"arm": 0}, 2))
    assert (skipped["status"], skipped["reason"]) == ("skipped", "its float run diverged")
    assert results.values({"arm": 1}, "test_accuracy") == pytest.approx({2: 0.62})
    assert len(results.diverged()) == 3


def test_a_signal_stops_the_grid_with_the_finished_cells_kept(tmp_path):
    def terminated(cell):
        if cell.seed == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return fake_run(cell)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(study.GridStopped, match="2 of 6 cells"):
        study.run_grid(cells(), terminated, results=study.Results(str(tmp_path), CONFIG),
                       log=lambda _: None)
    assert signal.getsignal(signal.SIGTERM) == before
    assert len(study.Results(str(tmp_path), CONFIG).records) == 2


def test_ctrl_c_stops_the_grid(tmp_path):
    def interrupted(cell):
        if cell.seed == 2:
            raise KeyboardInterrupt
        return fake_run(cell)

    with pytest.raises(study.GridStopped, match="4 of 6 cells"):
        study.run_grid(cells(), interrupted, results=study.Results(str(tmp_path), CONFIG),
                       log=lambda _: None)


def test_mean_interval_matches_the_hand_computed_t_interval():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653, half width 4.302653 / sqrt(3) = 2.484138.
    interval = study.mean_interval([1.0, 2.0, 3.0])
    assert (interval.mean, interval.n, interval.sd) == (2.0, 3, 1.0)
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((2 - 2.484138, 2 + 2.484138))
    assert interval.format(scale=1, digits=2) == "2.00 ± 2.48"


def test_mean_interval_of_one_and_of_no_value():
    assert study.mean_interval([0.5]).format() == "50.0"
    assert math.isnan(study.mean_interval([0.5]).half_width)
    assert study.mean_interval([]).format() == "–"


def test_paired_difference_uses_the_seeds_both_arms_finished():
    a = {0: 0.90, 1: 0.92, 2: 0.95, 4: 0.5}
    b = {0: 0.88, 1: 0.91, 2: 0.92, 3: 0.1}  # Seeds 3 and 4 are in one arm only.
    diff = study.paired_difference(a, b)
    # Differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, half width 4.302653 * 0.01 / sqrt(3).
    assert diff.n == 3
    assert diff.mean == pytest.approx(0.02)
    assert diff.sd == pytest.approx(0.01)
    assert diff.half_width == pytest.approx(0.024841, abs=1e-6)


def test_detectable_difference_and_resolution():
    # n = 5: t(0.975, 4) = 2.776445, t(0.8, 4) = 0.940965; (sum) * 1 / sqrt(5) = 1.662476.
    assert study.detectable_difference(1.0, 5) == pytest.approx(1.662476, abs=1e-6)
    assert math.isnan(study.detectable_difference(1.0, 1))
    assert 100 * study.resolution() == pytest.approx(0.2778, abs=1e-4)


def test_markdown_table_right_aligns_the_numbers():
    table = study.markdown_table(["arm", "8 bits"], [["ReLU6", "98.9 ± 0.3"]])
    assert table.splitlines() == ["| arm | 8 bits |", "| --- | ---: |",
                                  "| ReLU6 | 98.9 ± 0.3 |"]


def test_machine_names_the_cpu_and_jax():
    meta = study.machine()
    assert meta["cpu"] and meta["jax"] and meta["cpus"] >= 1
    assert "jax" in study.describe_machine(meta)


def test_plot_lines_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot is optional")
    path = tmp_path / "plot.png"
    series = [study.Series("a", [8, 4], [99.0, 90.0], [0.5, math.nan])]
    assert study.plot_lines(str(path), series, xlabel="bits", ylabel="%", title="t",
                            xticks={8: "8", 4: "4"}, log=lambda _: None)
    assert path.read_bytes()[:4] == b"\x89PNG"
