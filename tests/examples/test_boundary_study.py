"""examples/boundary_study.py: the metric, the flags, and a micro study end to end."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
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
                 "--batch-norm", "--optimizers", "--probe-batch"):
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
    assert cfg.quick and cfg.model == "convnet" and cfg.seeds == boundary_study.QUICK["seeds"]
    assert cfg.steps == 7 and cfg.settings == ((0.0, 0.0), (0.0, 1.0))


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("boundary")
    argv = ["--quick", "--steps", "3", "--seeds", "2", "--probe-batch", "16",
            "--optimizers", "sgd", "--dtypes", "bfloat16", "--out", str(out)]
    assert boundary_study.main(argv) == 0
    return out


def test_micro_study_writes_report_plot_and_json(micro_study):
    assert (micro_study / "boundary_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((micro_study / "results.json").read_text())
    assert results["config"]["steps"] == 3 and results["config"]["quick"]
    # 1 optimizer x 2 batch-norm x 1 dtype x 3 settings, 2 seeds each.
    assert len(results["accuracy"]) == 6
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
    assert len(accuracy[0]) == 6 and len(accuracy) == 2 + 2
    assert all(" ± " in cell for row in accuracy[2:] for cell in row[3:])
    hits = _table_after(report, "## Exact boundary hits")
    assert len(hits) == 2 + 2 * 2  # batch-norm x (init, trained)
    for row in hits[2:]:
        n, at_zero, at_six = int(row[3]), int(row[4]), int(row[5])
        assert 0 <= at_zero <= n and 0 <= at_six <= n
        assert float(row[6]) == pytest.approx(at_zero / n, rel=1e-2)
    gradients = _table_after(report, "## Gradient difference")
    assert len(gradients) == 2 + 2 * 2 * 3  # batch-norm x (init, trained) x settings


def test_micro_study_control_rows_are_exactly_equal(micro_study):
    results = json.loads((micro_study / "results.json").read_text())
    controls = [g for g in results["gradients"] if g["setting"] == [0.0, 0.0]]
    assert controls and all(
        (g["rel_l2"], g["frac_differ"], g["cosine"]) == (0.0, 0.0, 1.0) for g in controls
    )


def test_micro_study_no_hits_means_identical_gradients(micro_study):
    # The hits are counted in the forward pass of the gradients: where there
    # are none, the boundary setting cannot change a single bit.
    results = json.loads((micro_study / "results.json").read_text())
    for h in results["hits"]:
        if h["at_zero"] == 0 and h["at_six"] == 0:
            rows = [g for g in results["gradients"] if (g["dtype"], g["batch_norm"],
                    g["params"]) == (h["dtype"], h["batch_norm"], h["params"])]
            assert rows and all(g["rel_l2"] == 0 and g["frac_differ"] == 0 for g in rows)


def test_runs_of_one_seed_share_their_initialization():
    cfg = boundary_study.StudyConfig(model="convnet", steps=3)

    def initial(setting, seed):
        config = boundary_study.run_config(cfg, optimizer="sgd", batch_norm=True,
                                           dtype="float32", setting=setting, seed=seed)
        return boundary_study._initial_variables(config, boundary_study.convnet)

    reference = initial((0.0, 0.0), 0)
    other = initial((1.0, 0.5), 0)
    assert boundary_study._identical(other["params"], reference["params"])
    assert other["batch_stats"][boundary_study.BOUNDARY].tolist() == [1.0, 0.5]
    assert not boundary_study._identical(initial((0.0, 0.0), 1)["params"], reference["params"])


@pytest.mark.parametrize("batch_norm", [True, False])
def test_without_kink_hits_every_setting_gives_the_same_gradient(batch_norm):
    # A setting must not change the compiled program: with 1.0 as a constant, XLA
    # simplified around it and float32 gradients differed in 77% of their entries
    # with batch-norm, although no input was on a kink.
    data = boundary_study.input_pipeline.load_digits()
    x = boundary_study.input_pipeline.normalize(data.train_images[:64], mean=data.mean,
                                                std=data.std)
    y = jnp.asarray(data.train_labels[:64])
    results = []
    for g in (0.0, 1.0, 0.5):
        model = boundary_study.TinyConvNet(batch_norm=batch_norm, grad_at_zero=g, grad_at_six=g)
        variables = model.init(jax.random.key(0), x[:1], train=False)
        results.append(boundary_study.gradients(model, variables["params"],
                                                variables["batch_stats"], x, y))
    rows = boundary_study.jrelu6.summarize_boundary_hits(results[0][1])
    assert sum(r.at_zero + r.at_cap for r in rows) == 0
    for grads, _ in results[1:]:
        assert boundary_study.gradient_difference(results[0][0], grads)["frac_differ"] == 0


def test_a_run_uses_the_example_configuration():
    cfg = boundary_study.StudyConfig(model="convnet", steps=5, batch_size=16)
    config = boundary_study.run_config(cfg, optimizer="adamw", batch_norm=False,
                                       dtype="bfloat16", setting=(1.0, 0.5), seed=3)
    assert (config.optimizer, config.learning_rate, config.weight_decay) == (
        "adamw", cfg.adamw_lr, cfg.weight_decay)
    assert (config.grad_at_zero, config.grad_at_six, config.seed) == (1.0, 0.5, 3)
    assert not config.augment and config.label_smoothing == 0 and config.data == "digits"
    model = boundary_study.model_fn(cfg)(config, num_classes=10)
    assert isinstance(model, boundary_study.TinyConvNet)
    assert (model.grad_at_zero, model.grad_at_six, model.batch_norm) == (1.0, 0.5, False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gradients_differ_exactly_where_a_layer_sits_on_the_kink(dtype):
    # Zero the first convolution: its relu6 then sees only exact zeros, so its
    # kernel's gradient is exactly 0 with relu6'(0) = 0 and not with relu6'(0) = 1.
    models = [boundary_study.TinyConvNet(batch_norm=False, dtype=getattr(jnp, dtype),
                                         grad_at_zero=g, grad_at_six=g) for g in (0.0, 1.0)]
    x = np.linspace(-1, 1, 8 * 32 * 32 * 3, dtype=np.float32).reshape(8, 32, 32, 3)
    y = np.arange(8, dtype=np.int32) % 10
    params = models[0].init(jax.random.key(0), x[:1], train=False)["params"]
    params["Conv_0"] = {k: np.zeros_like(v) for k, v in params["Conv_0"].items()}
    (g0, hits), (g1, _) = (boundary_study.gradients(m, params, {}, x.astype(dtype), y)
                           for m in models)
    first = boundary_study.jrelu6.summarize_boundary_hits(hits)[0]
    assert first.layer == "ReLU6_0" and first.at_zero == first.n == 8 * 16 * 16 * 16
    assert not np.any(np.asarray(g0["Conv_0"]["kernel"]))
    assert np.any(np.asarray(g1["Conv_0"]["kernel"]))
    diff = boundary_study.gradient_difference(g0, g1)
    assert diff["rel_l2"] > 0 and diff["frac_differ"] > 0 and diff["cosine"] < 1
