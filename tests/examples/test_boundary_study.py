"""examples/boundary_study.py: the metric, the flags, and a micro study end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import boundary_study


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ({"w": [1.0, 0.0]}, {"w": [1.0, 0.0]}, (0.0, 0.0, 1.0)),
        ({"w": [1.0, 0.0]}, {"w": [1.0, 1.0]}, (1.0, 0.5, 1 / math.sqrt(2))),
        ({"w": [3.0], "b": [4.0]}, {"w": [6.0], "b": [8.0]}, (1.0, 1.0, 1.0)),
        ({"w": [1.0, 2.0]}, {"w": [-1.0, -2.0]}, (2.0, 1.0, -1.0)),
        ({"w": [0.0]}, {"w": [0.0]}, (0.0, 0.0, 1.0)),
    ],
)
def test_gradient_difference_known_answers(a, b, expected):
    got = boundary_study.gradient_difference(
        {k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in b.items()}
    )
    np.testing.assert_allclose(
        [got["rel_l2"], got["frac_differ"], got["cosine"]], expected, rtol=1e-12
    )


def test_gradient_difference_rejects_different_sizes():
    with pytest.raises(ValueError, match="gradient_difference: sizes differ"):
        boundary_study.gradient_difference([np.zeros(2)], [np.zeros(3)])


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        boundary_study.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--out", "--model", "--steps", "--seeds", "--settings", "--dtypes",
                 "--batch-norm", "--optimizers", "--probe-batch", "--train-limit"):
        assert flag in text


def test_bad_setting_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        boundary_study.parse_args(["--settings", "1"])
    assert exit_info.value.code == 2
    assert "grad_at_zero,grad_at_six" in capsys.readouterr().err


def test_quick_defaults_yield_to_explicit_flags():
    cfg = boundary_study.config_from_args(
        boundary_study.parse_args(["--quick", "--steps", "7", "--settings", "0,0", "0,1"])
    )
    assert cfg.quick and cfg.model == "tiny" and cfg.seeds == boundary_study.QUICK["seeds"]
    assert cfg.steps == 7 and cfg.settings == ((0.0, 0.0), (0.0, 1.0))


def test_static_settings_train_exactly_like_traced_ones(monkeypatch):
    # A model that cannot take traced boundary values gets them as static
    # arguments; the numbers must not change.
    cfg = boundary_study.StudyConfig(model="tiny", steps=3, batch_size=16, train_limit=32)
    data = boundary_study.load_digits(train_limit=32)
    data = (data[0], data[1], data[2][:32], data[3][:32])
    traced = boundary_study.Group(cfg, optimizer="sgd", batch_norm=False, dtype="bfloat16")
    monkeypatch.setattr(boundary_study, "_accepts_traced_settings", lambda model: False)
    static = boundary_study.Group(cfg, optimizer="sgd", batch_norm=False, dtype="bfloat16")
    assert traced.traced and not static.traced
    a, b = (g.train((1.0, 0.5), 0, data) for g in (traced, static))
    assert boundary_study.gradient_difference(a["variables"], b["variables"])["frac_differ"] == 0
    assert a["test_accuracy"] == b["test_accuracy"]


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("boundary")
    argv = ["--quick", "--steps", "3", "--seeds", "2", "--train-limit", "128",
            "--probe-batch", "16", "--optimizers", "sgd", "--out", str(out)]
    assert boundary_study.main(argv) == 0
    return out


def test_micro_study_writes_report_plot_and_json(micro_study):
    assert (micro_study / "boundary_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((micro_study / "results.json").read_text())
    assert results["config"]["steps"] == 3 and results["config"]["quick"]
    # 1 optimizer x 2 batch-norm x 2 dtypes x 3 settings, 2 seeds each.
    assert len(results["accuracy"]) == 12
    assert all(len(cell["accuracies"]) == 2 for cell in results["accuracy"])


def _table_after(report, heading):
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]


def test_micro_study_tables_have_the_expected_shape(micro_study):
    report = (micro_study / "results.md").read_text()
    assert "--quick" in report and "3 steps of batch 64" in report  # Says what was run.
    accuracy = _table_after(report, "## Test accuracy")
    assert accuracy[0][:3] == ["optimizer", "batch-norm", "dtype"]
    assert len(accuracy[0]) == 6 and len(accuracy) == 2 + 4
    assert all(" ± " in cell for row in accuracy[2:] for cell in row[3:])
    hits = _table_after(report, "## Exact boundary hits")
    assert len(hits) == 2 + 2 * 2 * 2  # dtype x batch-norm x (init, trained)
    for row in hits[2:]:
        n, at_zero, at_six = int(row[3]), int(row[4]), int(row[5])
        assert 0 <= at_zero <= n and 0 <= at_six <= n
        assert float(row[6]) == pytest.approx(at_zero / n, rel=1e-2)
    gradients = _table_after(report, "## Gradient difference")
    assert len(gradients) == 2 + 2 * 2 * 2 * 3


def test_micro_study_control_rows_are_exactly_equal(micro_study):
    results = json.loads((micro_study / "results.json").read_text())
    controls = [g for g in results["gradients"] if g["setting"] == [0.0, 0.0]]
    assert controls and all(
        (g["rel_l2"], g["frac_differ"], g["cosine"]) == (0.0, 0.0, 1.0) for g in controls
    )


def test_micro_study_finds_the_exact_zeros_of_a_biasless_start(micro_study):
    # Without batch-norm the tiny net starts with zero biases, and the digits'
    # background is exactly 0: its first relu6 sees exact zeros, so the
    # setting at 0 changes the gradient.
    results = json.loads((micro_study / "results.json").read_text())
    for dtype in ("float32", "bfloat16"):
        hits = next(h for h in results["hits"] if h["dtype"] == dtype
                    and not h["batch_norm"] and h["params"] == "init")
        assert hits["at_zero"] > 0
        changed = next(g for g in results["gradients"] if g["dtype"] == dtype
                       and not g["batch_norm"] and g["params"] == "init"
                       and g["setting"] == [1.0, 1.0])
        assert changed["rel_l2"] > 0 and changed["cosine"] < 1
