"""examples/precision_study.py: the grid, the flags, the paired report, a tiny study end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest

import precision_study
from mobilenet import study

TINY = precision_study.Design(model="tiny", float_steps=3, qat_steps=2,
                              activations=("relu6", "relu"), activation_bits=(4,),
                              qat_activation_bits=(4,), pairs=((8, 4),),
                              per_tensor_ptq=((8, 4),), per_tensor_qat=((8, 4),),
                              calibration_batches=1, seeds=2)


def test_each_seed_runs_its_float_runs_first_then_ptq_then_qat():
    keys = TINY.keys()
    assert [k["arm"] for k in keys] == ["float"] * 2 + ["ptq"] * 4 + ["qat"] * 4
    assert [k["act"] for k in keys[:2]] == ["relu6", "relu"]
    integer = [(k["arm"], k["w"], k["a"], k["gran"]) for k in keys if k["w"]]
    assert integer == [("ptq", 8, 4, "per_channel"), ("ptq", 8, 4, "per_tensor"),
                       ("qat", 8, 4, "per_channel"), ("qat", 8, 4, "per_tensor")]
    cells = TINY.cells()
    assert len(cells) == 2 * len(keys) and {c.seed for c in cells[:len(keys)]} == {0}


def test_the_full_design_has_the_issues_bit_widths_and_five_seeds():
    design = precision_study.Design()
    assert design.seeds == 5 and design.activations == ("relu6", "relu", "capped_relu")
    assert design.pairs == ((8, 8), (8, 4), (4, 8), (4, 4), (3, 3), (8, 2))
    qat = [(k["w"], k["a"]) for k in design.keys() if k["arm"] == "qat" and k["w"]]
    assert set(design.pairs) <= set(qat)


def test_more_seeds_resume_the_same_grid_and_other_settings_are_refused():
    assert (dataclasses.replace(TINY, seeds=7).configuration() == TINY.configuration())
    assert (dataclasses.replace(TINY, qat_steps=3).configuration() != TINY.configuration())


def test_a_difference_without_spread_is_detectable_down_to_one_test_image(tmp_path):
    results = study.Results(str(tmp_path), TINY.configuration())
    for seed in range(2):
        results.add(study.Cell(precision_study.key("float", "relu6"), seed),
                    {"status": "ok", "test_accuracy": 0.99})
        results.add(study.Cell(precision_study.key("float", "relu"), seed),
                    {"status": "ok", "test_accuracy": 0.98})
    row = {r["what"]: r for r in precision_study.differences(results, TINY)}[
        "ReLU6 - ReLU, float"]
    assert row["half_width"] == 0 and row["detectable"] == pytest.approx(100 / 360)


def test_quick_and_explicit_flags():
    args = precision_study.parse_args(["--quick", "--qat-steps", "7"])
    design = precision_study.design_from_args(args)
    assert design.quick and design.qat_steps == 7 and design.seeds == precision_study.QUICK.seeds
    with pytest.raises(SystemExit, match="--seeds"):
        precision_study.design_from_args(precision_study.parse_args(["--seeds", "0"]))


def test_differences_pair_the_arms_by_seed(tmp_path):
    results = study.Results(str(tmp_path), TINY.configuration())
    relu6, relu = precision_study.key("float", "relu6"), precision_study.key("float", "relu")
    for seed, (a, b) in enumerate([(0.99, 0.98), (0.98, 0.98), (0.97, 0.95)]):
        results.add(study.Cell(relu6, seed), {"status": "ok", "test_accuracy": a})
        if seed != 2:
            results.add(study.Cell(relu, seed), {"status": "ok", "test_accuracy": b})
    results.add(study.Cell(relu, 2), {"status": "diverged", "step": 3})
    rows = {r["what"]: r for r in precision_study.differences(results, TINY)}
    row = rows["ReLU6 - ReLU, float"]
    # Seed 2 diverged for ReLU: dropped from both arms. Differences 1 and 0 points:
    # mean 0.5, sd sqrt(0.5), half width t(0.975, 1) * sd / sqrt(2) = 12.706205 * 0.5.
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.5)
    assert row["half_width"] == pytest.approx(12.706205 * 0.5, rel=1e-6)
    # (t(0.975, 1) + t(0.8, 1)) * sd / sqrt(n) with t(0.975, 1) = 12.706205, t(0.8, 1) = 1.376382.
    assert row["detectable"] == pytest.approx((12.706205 + 1.376382) * 0.5, rel=1e-6)
    table = precision_study.difference_table(list(rows.values()))
    assert "| ReLU6 - ReLU, float | +0.50 | [-5.85, +6.85] | 2 |" in table


@pytest.mark.slow
def test_a_tiny_study_end_to_end_resumes_and_pairs_the_seeds(tmp_path, monkeypatch, capsys):
    # ReLU6 only: each distinct model compiles (seconds each); the second seed reuses them.
    monkeypatch.setattr(precision_study, "QUICK", dataclasses.replace(TINY, activations=("relu6",)))
    out = tmp_path / "study"
    assert precision_study.main(["--quick", "--out", str(out), "--no-plot"]) == 0
    runs = [json.loads(line) for line in (out / study.RUNS_FILE).read_text().splitlines()]
    assert len(runs) == 2 * 7  # Per seed: float, 3 PTQ, 3 QAT.
    assert all(r["status"] == "ok" and 0 <= r["test_accuracy"] <= 1 for r in runs)
    report = json.loads((out / "results.json").read_text())
    rows = {r["what"]: r for r in report["differences"]}
    assert rows["QAT - PTQ, ReLU6 a4"]["n"] == 2
    assert rows["QAT - PTQ, integer ReLU6 w8/a4 per channel"]["n"] == 2
    assert rows["per channel - per tensor, QAT w8/a4"]["n"] == 2
    assert "| QAT | per channel |" in (out / "results.md").read_text()
    capsys.readouterr()
    assert precision_study.main(["--quick", "--out", str(out), "--no-plot"]) == 0
    assert f"resuming: {len(runs)} of {len(runs)} cells" in capsys.readouterr().err
