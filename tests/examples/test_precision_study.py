"""examples/precision_study.py: the flags, the table, and a micro study end to end."""

from __future__ import annotations

import json
import re

import pytest

import precision_study


def test_quick_sets_its_configuration_and_explicit_flags_win():
    cfg = precision_study.config_from_args(precision_study.parse_args(["--quick"]))
    assert cfg.quick and cfg.width == precision_study.QUICK["width"]
    assert cfg.qat_bits == precision_study.QUICK["qat_bits"]
    assert cfg.bits == precision_study.ALL_BITS
    cfg = precision_study.config_from_args(
        precision_study.parse_args(["--quick", "--steps", "7", "--qat-bits", "3"]))
    assert (cfg.steps, cfg.qat_bits) == (7, (3,))


@pytest.mark.parametrize("text", ["1", "4,x", "17"])
def test_bad_bit_lists_are_refused(text, capsys):
    with pytest.raises(SystemExit):
        precision_study.parse_args(["--bits", text])
    assert "--bits" in capsys.readouterr().err


def test_the_table_has_a_row_per_activation_and_mode_and_a_column_per_width():
    cfg = precision_study.StudyConfig(seeds=2, bits=(8, 4), qat_bits=(4,),
                                      rows=("relu6:affine",), qat_rows=("relu6:affine",))
    runs = [{"nonlinearity": "relu6", "scheme": None, "mode": "float", "bits": None,
             "seed": s, "test_accuracy": 0.9} for s in range(2)]
    runs += [{"nonlinearity": "relu6", "scheme": "affine", "mode": mode, "bits": b, "seed": s,
              "test_accuracy": 0.5 + 0.1 * s} for mode, bits in (("PTQ", (8, 4)), ("QAT", (4,)))
             for b in bits for s in range(2)]
    lines = precision_study.format_table({"runs": runs}, cfg).splitlines()
    assert lines[0] == "| activation, scheme | mode | float | 8 bits | 4 bits |"
    assert lines[2] == "| ReLU6 [0, 6], affine | PTQ | 90.0 ± 0.0 | 55.0 ± 7.1 | 55.0 ± 7.1 |"
    assert lines[3] == "| ReLU6 [0, 6], affine | QAT | 90.0 ± 0.0 | – | 55.0 ± 7.1 |"


@pytest.mark.slow
def test_a_micro_study_writes_the_table_the_json_and_the_plot(tmp_path, capsys):
    out = tmp_path / "study"
    code = precision_study.main([
        "--model", "tiny", "--steps", "2", "--batch-size", "32", "--seeds", "2",
        "--bits", "4", "--qat-bits", "4", "--rows", "relu6:affine", "relu:max",
        "--qat-rows", "relu6:affine", "--calibration-batches", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0] == "| activation, scheme | mode | float | 4 bits |"
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| ReLU6 [0, 6], affine", "PTQ"], ["| ReLU, range: max", "PTQ"],
        ["| ReLU6 [0, 6], affine", "QAT"]]
    for cell in re.findall(r"(\d+\.\d) ± (\d+\.\d)", "\n".join(table[2:])):
        assert 0 <= float(cell[0]) <= 100 and float(cell[1]) >= 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    # 2 seeds x (2 float runs + 2 PTQ evaluations + 1 QAT run).
    assert len(runs) == 10
    assert all(0 <= r["test_accuracy"] <= 1 for r in runs)
    assert (out / "precision_study.png").stat().st_size > 0
    assert (out / "results.md").read_text().count("| ReLU") == 3
