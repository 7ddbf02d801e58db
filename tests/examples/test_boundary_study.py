"""examples/boundary_study.py: the metric, the flags, the pairing, and a micro grid end to end."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import boundary_study
from mobilenet.infra import datasets


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


def test_the_probe_scale_halves_until_the_gradients_are_finite():
    calls = []

    def grads_at(scale):
        calls.append(scale)
        return {"w": np.array([np.inf if scale > 8 else scale])}, None

    scale, (grads, _) = boundary_study.finite_scale(grads_at, 64.0)
    assert scale == 8.0 and calls == [64.0, 32.0, 16.0, 8.0]
    assert grads["w"][0] == 8.0


def test_the_probe_scale_stops_at_one():
    scale, (grads, _) = boundary_study.finite_scale(
        lambda s: ({"w": np.array([np.nan])}, None), 4.0)
    assert scale == 1.0 and np.isnan(grads["w"][0])


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        boundary_study.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--out", "--seeds", "--arms", "--settings", "--steps",
                 "--probe-batch", "--no-plot", "--combine"):
        assert flag in text


@pytest.mark.parametrize("argv,message", [
    (["--settings", "1"], "grad_at_zero,grad_at_six"),
    (["--arms", "mobilenet_v2"], "an arm is MODEL:DTYPE"),
    (["--arms", "mobilenet_v2:float64"], "an arm is MODEL:DTYPE"),
])
def test_bad_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        boundary_study.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_quick_defaults_yield_to_explicit_flags():
    cfg = boundary_study.config_from_args(boundary_study.parse_args(
        ["--quick", "--steps", "7", "--settings", "0,0", "0,1", "--arms", "tiny:float16"]))
    assert cfg.quick and cfg.seeds == boundary_study.QUICK.seeds
    assert cfg.steps_of("mobilenet_v2") == 7 and cfg.steps_of("tiny") == 7
    assert cfg.settings == ((0.0, 0.0), (0.0, 1.0)) and cfg.arms == (("tiny", "float16"),)


@pytest.mark.parametrize("cfg", [boundary_study.QUICK, boundary_study.StudyConfig()],
                         ids=["quick", "full"])
def test_the_grid_is_every_arm_setting_and_seed_seed_major(cfg):
    cells = boundary_study.cells(cfg)
    assert len(cells) == len(cfg.arms) * len(cfg.settings) * cfg.seeds
    assert len({c.id for c in cells}) == len(cells)
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)  # Whole seeds first.
    first = cells[0].key
    assert (first["g0"], first["g6"]) == cfg.settings[0] == boundary_study.REFERENCE


def test_the_full_grid_covers_the_issue():
    cfg = boundary_study.StudyConfig()
    assert cfg.seeds >= 5
    assert set(cfg.settings) == {(0, 0), (1, 1), (0.5, 0.5), (1, 0), (0, 1)}
    assert {m for m, _ in cfg.arms} == {"mobilenet_v2", "mobilenet_v3_small"}
    assert {d for _, d in cfg.arms} == {"float32", "bfloat16", "float16"}


def test_runs_of_one_seed_start_from_the_same_parameters():
    def initial(setting, seed):
        config = boundary_study.run_config("tiny", "float32", setting, seed, steps=3)
        return boundary_study._initial_variables(config)

    reference = initial((0.0, 0.0), 0)
    for leaf_a, leaf_b in zip(jax.tree.leaves(reference), jax.tree.leaves(initial((1.0, 1.0), 0))):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    other_seed = jax.tree.leaves(initial((0.0, 0.0), 1)["params"])
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(reference["params"]), other_seed))


def test_a_run_is_the_default_recipe_with_its_setting_and_kink_counts():
    config = boundary_study.run_config("mobilenet_v3_small", "float16", (1.0, 0.5), 3, 40)
    recipe = boundary_study.get_config()
    assert (config.model, config.dtype, config.seed, config.steps) == (
        "mobilenet_v3_small", "float16", 3, 40)
    assert (config.grad_at_zero, config.grad_at_six, config.count_kinks) == (1.0, 0.5, True)
    for field in ("width", "optimizer", "batch_size", "augment", "label_smoothing", "data"):
        assert getattr(config, field) == getattr(recipe, field), field


@pytest.mark.parametrize("low,high,expected", [
    (-0.004, 0.006, "no effect larger than 0.60 points"),
    (0.001, 0.009, "effect: +0.50 points (95% interval excludes 0)"),
])
def test_the_verdict_names_the_interval(low, high, expected):
    interval = boundary_study.study.Interval((low + high) / 2, (high - low) / 2, 5, 0.01)
    assert boundary_study._verdict(interval) == expected


MICRO = ["--arms", "tiny:float32", "tiny:float16", "--settings", "0,0", "1,1", "--seeds", "2",
         "--steps", "3", "--probe-batch", "16"]


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("boundary")
    assert boundary_study.main([*MICRO, "--out", str(out)]) == 0
    return out


def _runs(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_micro_study_records_every_run_with_its_kink_counts(micro_study):
    runs = _runs(micro_study)
    assert len(runs) == 2 * 2 * 2 and all(r["status"] == "ok" for r in runs)
    for r in runs:
        assert r["kinks"] and all(0 <= k["at_zero"] <= k["n"] and k["n"] > 0 for k in r["kinks"])
        reference = (r["key"]["g0"], r["key"]["g6"]) == (0.0, 0.0)
        assert ("gradients" in r) == reference
        assert not reference or set(r["gradients"]) == {"init", "mid", "final"}
    layers = {k["layer"] for k in runs[0]["kinks"]}
    assert any("head" in name for name in layers)  # tiny's hard-swish layer is counted.


def test_micro_study_writes_pasteable_tables_and_a_plot(micro_study):
    assert (micro_study / "boundary_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (micro_study / "results.md").read_text()
    outcome = _table_after(report, "## Final test accuracy")
    assert outcome[0][:3] == ["model", "dtype", "(g0, g6)"] and len(outcome) == 2 + 4
    assert outcome[2][-1] == "reference" and outcome[3][-1].startswith(("no effect", "effect"))
    kinks = _table_after(report, "## Kink hits per layer, tiny")
    assert kinks[0] == ["layer", "float32: on 0 / on 6", "float16: on 0 / on 6"]
    assert kinks[-1][0] == "**all layers**"
    gradients = _table_after(report, "## Gradient differences")
    assert len(gradients) == 2 + 2 * 3 * 2  # arms x (init, mid, final) x settings
    assert [row[2] for row in gradients[2:5:2]] == ["init", "mid"]


def test_micro_study_control_rows_are_exactly_equal(micro_study):
    for r in _runs(micro_study):
        for probes in r.get("gradients", {}).values():
            control = probes[0]
            assert control["setting"] == [0.0, 0.0]
            assert (control["rel_l2"], control["frac_differ"], control["cosine"]) == (0, 0, 1)


def test_micro_study_resumes_without_training_again(micro_study, capsys):
    before = (micro_study / "runs.jsonl").read_text()
    assert boundary_study.main([*MICRO, "--out", str(micro_study), "--no-plot"]) == 0
    assert capsys.readouterr().err.count("resuming: 4 of 4 cells") == 2  # An arm at a time.
    assert (micro_study / "runs.jsonl").read_text() == before


def _micro_arm(tmp_path, arm, *extra):
    out = tmp_path / arm.replace(":", "-")
    argv = [*MICRO[:1], arm, *MICRO[3:], *extra, "--no-plot", "--out", str(out)]
    assert boundary_study.main(argv) == 0
    return out


def test_combine_reports_grids_run_apart_as_one(micro_study, tmp_path, capsys):
    other = _micro_arm(tmp_path, "tiny:bfloat16")
    out = tmp_path / "combined"
    assert boundary_study.main(["--combine", str(micro_study), str(other), "--out", str(out),
                                "--no-plot"]) == 0
    assert len(_runs(out)) == 8 + 4
    outcome = _table_after((out / "results.md").read_text(), "## Final test accuracy")
    assert [row[1] for row in outcome[2:]] == ["float32"] * 2 + ["float16"] * 2 + ["bfloat16"] * 2
    capsys.readouterr()
    whole = ["--arms", "tiny:float32", "tiny:float16", "tiny:bfloat16", *MICRO[3:]]
    assert boundary_study.main([*whole, "--out", str(out), "--no-plot"]) == 0
    assert capsys.readouterr().err.count("resuming: 4 of 4 cells") == 3  # The grid resumes.


def test_combine_refuses_grids_that_differ_beyond_their_arms(micro_study, tmp_path, capsys):
    other = _micro_arm(tmp_path, "tiny:bfloat16", "--seeds", "1")
    code = boundary_study.main(["--combine", str(micro_study), str(other),
                                "--out", str(tmp_path / "combined"), "--no-plot"])
    assert code == 2
    assert "is a grid with other settings, seeds" in capsys.readouterr().err


def test_combine_refuses_grid_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        boundary_study.parse_args(["--combine", "a", "b", "--seeds", "3"])
    assert exit_info.value.code == 2
    assert "--combine takes the grid from its directories" in capsys.readouterr().err


def _table_after(report, heading):
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_probe_gradients_differ_exactly_where_a_layer_sits_on_the_kink(dtype):
    # A zero stem kernel feeds batch norm zeros, which it maps to its bias, 0: the
    # stem's relu6 then sees only exact zeros, so the stem kernel's gradient is 0
    # with relu6'(0) = 0 and not with relu6'(0) = 1.
    data = datasets.load_digits()
    images, labels = boundary_study._probe_batch(data, 8, dtype)
    grads = []
    for g in (0.0, 1.0):
        config = boundary_study.run_config("tiny", dtype, (g, g), 0, steps=3)
        model = boundary_study.train_state.create_model(config, num_classes=10)
        variables = model.init(jax.random.key(0), images[:1], train=False)
        stem = variables["params"]["stem"]
        variables["params"]["stem"] = {**stem, "conv": {"kernel": np.zeros_like(
            stem["conv"]["kernel"])}}
        grads.append(boundary_study.gradients(model, variables, images, labels,
                                              np.float32(1.0)))
    (g0, hits), (g1, _) = grads
    stem_hits = [r for r in boundary_study.jrelu6.summarize_boundary_hits(hits)
                 if r.layer.startswith("stem")]
    assert stem_hits and stem_hits[0].at_zero == stem_hits[0].n
    assert not np.any(np.asarray(g0["stem"]["conv"]["kernel"]))
    assert np.any(np.asarray(g1["stem"]["conv"]["kernel"]))
    diff = boundary_study.gradient_difference(g0, g1)
    assert diff["rel_l2"] > 0 and diff["cosine"] < 1
