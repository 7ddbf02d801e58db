"""Quantization-aware training in the example: folded batch norm, quantized weights, freeze,
fine-tuning from a float run (--weight-bits, --bn-freeze-step, --init-from)."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import jrelu6
from mobilenet import finetune, models, quantization, sharding, train, train_state
from mobilenet.configs import get_config
from mobilenet.infra import distributed, workdir
from mobilenet.infra.settings import ConfigMismatch, InvalidSetting

IMAGE = (16, 16, 3)


def _layers(**overrides):
    settings = dict(dtype=jnp.float32, batch_norm=True, bn_momentum=0.9, bn_epsilon=1e-3,
                    depthwise="auto", pointwise="matmul", activation="jrelu6",
                    grad_at_zero=0.0, grad_at_six=0.0, symmetric_padding=True,
                    activation_bits=8, weight_bits=8)
    settings.update(overrides)
    return models._Layers(**settings)


def _conv_bn_relu6(**overrides):
    """A tiny Conv-BN-ReLU6 layer (3x3, 5 -> 6 channels) in quantization-aware training."""
    return models.ConvBN(6, 3, 1, _layers(**overrides), "relu6")


def _variables(module, x, seed=0):
    """Initialised variables with batch-norm parameters and statistics away from 1 and 0."""
    variables = module.init(jax.random.key(seed), x, train=False)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 4))
    bn = {"scale": jax.random.uniform(next(keys), (6,), minval=0.5, maxval=2.0),
          "bias": jax.random.normal(next(keys), (6,))}
    stats = {"mean": jax.random.normal(next(keys), (6,)),
             "var": jax.random.uniform(next(keys), (6,), minval=0.2, maxval=3.0)}
    return {"params": {**variables["params"], "bn": bn}, "batch_stats": {"bn": stats}}


def _x(seed=0, shape=(4, 9, 9, 5)):
    return jax.random.normal(jax.random.key(100 + seed), shape)


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _int8_form(variables, x, *, axis=-1):
    """What LiteRT's int8 file computes (in float): fold, quantize the weights, conv + bias,
    relu6 on [0, 6] — composed from the library's functions, not from the example."""
    p, s = variables["params"], variables["batch_stats"]
    w, b = jrelu6.fold_batch_norm(p["conv"]["kernel"], scale=p["bn"]["scale"],
                                  offset=p["bn"]["bias"], mean=s["bn"]["mean"],
                                  var=s["bn"]["var"], epsilon=1e-3)
    w = jrelu6.fake_quant_weights(w, num_bits=8, axis=axis)
    return jrelu6.quantized_relu6(_conv(x, w) + b, num_bits=8)


@pytest.mark.parametrize("granularity, axis", [("per_channel", -1), ("per_tensor", None)])
def test_evaluation_is_the_folded_int8_form(granularity, axis):
    module = _conv_bn_relu6(weight_granularity=granularity)
    x = _x()
    variables = _variables(module, x)
    got = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    want = jax.jit(lambda v, x: _int8_form(v, x, axis=axis))(variables, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
    # Outputs on relu6's 8-bit grid, and the granularity matters.
    levels = np.asarray(got) * 255 / 6
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    other = _int8_form(variables, x, axis=None if axis == -1 else -1)
    assert not np.allclose(np.asarray(got), np.asarray(other), atol=1e-6)


@pytest.mark.parametrize("granularity, axis", [("per_channel", -1), ("per_tensor", None)])
def test_given_its_input_scale_the_folded_bias_is_on_the_int32_accumulator_grid(
        granularity, axis):
    module = _conv_bn_relu6(weight_granularity=granularity)
    in_scale = jnp.float32(0.05)
    x = jnp.round(_x() / in_scale) * in_scale  # An input on its grid, as in the model.
    variables = _variables(module, x)
    p, s = variables["params"], variables["batch_stats"]
    w, b = jrelu6.fold_batch_norm(p["conv"]["kernel"], scale=p["bn"]["scale"],
                                  offset=p["bn"]["bias"], mean=s["bn"]["mean"],
                                  var=s["bn"]["var"], epsilon=1e-3)
    q, w_scale = jrelu6.quantize_weights(w, axis=axis)
    step = in_scale * w_scale  # LiteRT's int32 bias scale.
    # Evaluation: the file's integers, (conv(x levels, q) + int32 bias) * step, exactly.
    accumulator = _conv(jnp.round(x / in_scale), q.astype(jnp.float32))
    want = jrelu6.quantized_relu6((accumulator + jnp.round(b / step)) * step, num_bits=8)
    apply = jax.jit(lambda v, x, s: module.apply(v, x, train=False, in_scale=s))
    np.testing.assert_array_equal(np.asarray(apply(variables, x, in_scale)), np.asarray(want))
    # Frozen training computes it in float (the same values, bar float32 rounding near a
    # level's midpoint), and the bias's gradient passes straight through.
    frozen = _conv_bn_relu6(weight_granularity=granularity, bn_frozen=True)

    def loss(params, in_scale):
        y, _ = frozen.apply({**variables, "params": params}, x, train=True,
                            in_scale=in_scale, mutable=["batch_stats"])
        return jnp.sum(y * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)), y

    (_, y), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"], in_scale)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=0, atol=6 / 255 + 1e-6)
    assert np.mean(np.abs(np.asarray(y) - np.asarray(want)) < 1e-6) >= 0.99
    (_, _), float_grads = jax.value_and_grad(loss, has_aux=True)(variables["params"], None)
    # The same as with a float bias (not the zero gradient of a rounding), bar the few
    # outputs that sit on a clip boundary in one form only: which ones depends on the
    # CPU's float32 summation order (a Zen 4 EPYC: 2 of 6 channels, by 0.1% and 0.5%).
    np.testing.assert_allclose(np.asarray(grads["bn"]["bias"]),
                               np.asarray(float_grads["bn"]["bias"]), rtol=1e-2)
    # Without the input scale the bias stays float: another output.
    float_bias = apply(variables, x, None)
    assert not np.allclose(np.asarray(float_bias), np.asarray(want), atol=1e-6)


def test_per_channel_weights_have_one_scale_per_output_channel_per_tensor_one():
    module = _conv_bn_relu6()
    x = _x()
    variables = _variables(module, x)
    p, s = variables["params"], variables["batch_stats"]
    w, _ = jrelu6.fold_batch_norm(p["conv"]["kernel"], scale=p["bn"]["scale"],
                                  offset=p["bn"]["bias"], mean=s["bn"]["mean"],
                                  var=s["bn"]["var"], epsilon=1e-3)
    for axis, count in ((-1, 6), (None, 1)):
        _, scale = jrelu6.quantize_weights(w, axis=axis)
        assert scale.shape == (count,)
        levels = np.asarray(jrelu6.fake_quant_weights(w, axis=axis)).reshape(-1, 6)
        ratios = levels / np.asarray(scale)
        np.testing.assert_allclose(ratios, np.round(ratios), atol=1e-3)


def test_frozen_training_is_the_int8_form_and_keeps_the_statistics():
    module = _conv_bn_relu6(bn_frozen=True)
    x = _x()
    variables = _variables(module, x)
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    want = _int8_form(variables, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=0, atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_array_equal(np.asarray(updates["batch_stats"]["bn"][name]),
                                      np.asarray(variables["batch_stats"]["bn"][name]))


def test_before_the_freeze_training_normalizes_with_the_batch_statistics():
    module = _conv_bn_relu6(bn_frozen=False)
    x = _x()
    variables = _variables(module, x)
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    p, s = variables["params"], variables["batch_stats"]["bn"]
    factor = p["bn"]["scale"] / jnp.sqrt(s["var"] + 1e-3)
    w = jrelu6.fake_quant_weights(p["conv"]["kernel"] * factor)
    z = _conv(x, w) / factor  # The quantized weights, unscaled: ~ the float conv.
    mean, var = jnp.mean(z, (0, 1, 2)), jnp.var(z, (0, 1, 2))
    normalized = (z - mean) / jnp.sqrt(var + 1e-3) * p["bn"]["scale"] + p["bn"]["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(jrelu6.quantized_relu6(normalized)),
                               atol=6 / 255 + 1e-5)  # At most a level apart (rounding).
    np.testing.assert_allclose(np.asarray(updates["batch_stats"]["bn"]["mean"]),
                               np.asarray(0.9 * s["mean"] + 0.1 * mean), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["batch_stats"]["bn"]["var"]),
                               np.asarray(0.9 * s["var"] + 0.1 * var), rtol=1e-4, atol=1e-5)


def test_the_frozen_flag_may_be_traced():
    x = _x()
    variables = _variables(_conv_bn_relu6(), x)

    @jax.jit
    def run(flag):
        module = models.ConvBN(6, 3, 1, _layers(bn_frozen=flag), "relu6")
        return module.apply(variables, x, train=True, mutable=["batch_stats"])

    for flag in (False, True):
        y, stats = run(jnp.asarray(flag))
        want, want_stats = _conv_bn_relu6(bn_frozen=flag).apply(variables, x, train=True,
                                                                mutable=["batch_stats"])
        np.testing.assert_allclose(np.asarray(y), np.asarray(want), atol=1e-6)
        np.testing.assert_allclose(np.asarray(stats["batch_stats"]["bn"]["var"]),
                                   np.asarray(want_stats["batch_stats"]["bn"]["var"]),
                                   rtol=1e-6)


def test_gradients_reach_the_kernel_and_batch_norm_parameters():
    module = _conv_bn_relu6(bn_frozen=True)
    x = _x()
    variables = _variables(module, x)

    def loss(params):
        y, _ = module.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
        return jnp.sum(y * jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))

    grads = flatten_dict(jax.grad(loss)(variables["params"]))
    for name in (("conv", "kernel"), ("bn", "scale"), ("bn", "bias")):
        assert float(jnp.abs(grads[name]).sum()) > 0, name


# --- the models -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2", "mobilenet_v1"])
def test_a_qat_model_has_the_float_models_parameters_and_quantizes_every_tensor(name):
    x = jnp.zeros((1, 32, 32, 3))

    def variables(**fields):
        model = models.create_model(name, num_classes=10, width_multiplier=0.25, **fields)
        return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    plain, qat = variables(), variables(weight_bits=8, activation_bits=8)
    assert jax.tree.map(lambda a: a.shape, plain["params"]) == jax.tree.map(
        lambda a: a.shape, qat["params"])
    extra = set(flatten_dict(qat["batch_stats"])) - set(flatten_dict(plain["batch_stats"]))
    ranges = {path[-2] for path in extra}
    assert {"input_range", "pool_range", "logits_range"} <= ranges
    if name != "mobilenet_v1":  # Linear bottlenecks and residual sums.
        assert {"out_range", "add_range"} <= ranges
    assert {path[-1] for path in extra} == {"min", "max"}
    # Weights only: no activation ranges at all.
    weights_only = variables(weight_bits=8)
    assert set(flatten_dict(weights_only["batch_stats"])) == set(
        flatten_dict(plain["batch_stats"]))


def test_moving_range_starts_from_the_first_batch_and_includes_zero():
    layer = quantization.MovingRange(8)
    x = jnp.linspace(1.0, 3.0, 16)
    variables = layer.init(jax.random.key(0), x)
    y, updates = layer.apply(variables, x, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    assert float(stats["min"]) == 0.0 and float(stats["max"]) == 3.0
    _, again = layer.apply({"batch_stats": stats}, 2 * x, mutable=["batch_stats"])
    assert float(again["batch_stats"]["max"]) == pytest.approx(0.9 * 3 + 0.1 * 6)
    np.testing.assert_array_equal(np.asarray(y),
                                  np.asarray(jrelu6.fake_quant(x, min=0.0, max=3.0)))


@pytest.mark.parametrize("fields, message", [
    (dict(weight_bits=1), "weight_bits"),
    (dict(weight_bits=8, weight_granularity="per_row"), "weight_granularity"),
    (dict(bn_freeze_step=3), "bn_freeze_step needs weight_bits"),
    (dict(weight_bits=8, nonlinearity="relu"), "nonlinearity='relu6'"),
])
def test_the_model_refuses_settings_it_cannot_build(fields, message):
    model = models.create_model("tiny", num_classes=10, **fields)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                          train=False))


@pytest.mark.parametrize("overrides, field", [
    (dict(weight_bits=8, bn_freeze_step=3, batch_norm=False), "bn_freeze_step"),
    (dict(weight_bits=8, quant_scheme="fixed_point"), "weight_bits"),
    (dict(weight_bits=17), "weight_bits"),
])
def test_the_config_refuses_qat_settings_that_do_not_go_together(overrides, field):
    with pytest.raises(InvalidSetting) as info:
        get_config(**overrides)
    assert info.value.field == field


# --- training: the freeze, resume across it, fine-tuning from a float run -------------------


def _config(**overrides):
    settings = dict(model="tiny", data="synthetic", image_size=IMAGE[0], synthetic_examples=64,
                    batch_size=16, eval_batch_size=32, steps=8, log_every=2, eval_every=0,
                    checkpoint_every=4, learning_rate=0.1, warmup_steps=0, progress=False,
                    plot=False)
    settings.update(overrides)
    return get_config(**settings)


def _bn_means(state):
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(state.batch_stats)).items()
            if k[-1] == "mean" and "bn" in k}


def test_the_train_step_freezes_batch_norm_from_the_chosen_step():
    mesh = sharding.create_mesh()
    config = _config(weight_bits=8, activation_bits=8, bn_freeze_step=2)
    model = train_state.create_model(config, num_classes=10)
    state = train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                           total_steps=config.steps)
    step = train_state.make_train_step(mesh=mesh, num_classes=10, mean=(0.5,) * 3,
                                       std=(0.25,) * 3, donate=False)
    rng = np.random.default_rng(0)
    means = [_bn_means(state)]
    for _ in range(4):
        batch = distributed.place(
            {"image": rng.integers(0, 256, (16, *IMAGE), dtype=np.uint8),
             "label": rng.integers(0, 10, 16).astype(np.int32)},
            sharding.batch_sharding(mesh))
        state, _ = step(state, batch)
        means.append(_bn_means(state))
    changed = [any(not np.array_equal(a[k], b[k]) for k in a) for a, b in itertools.pairwise(means)]
    assert changed == [True, True, False, False]  # Steps 0 and 1 update; from step 2, frozen.


class _Killed(Exception):
    pass


def test_a_run_resumed_across_the_freeze_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    config = _config(weight_bits=8, activation_bits=8, bn_freeze_step=5)
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    run = str(tmp_path / "killed")
    make = train_state.make_train_step

    def make_mortal(**options):
        step, count = make(**options), [0]

        def mortal(state, batch):
            count[0] += 1
            if count[0] > 6:  # Dies at step 7, after the freeze; resumes from step 4, before.
                raise _Killed
            return step(state, batch)

        return mortal

    with monkeypatch.context() as patch:
        patch.setattr(train_state, "make_train_step", make_mortal)
        with pytest.raises(_Killed):
            train.train_and_evaluate(config, run)
    resumed = train.train_and_evaluate(config, run)
    assert resumed["resumed_from"] == 4
    for key in ("test_accuracy", "test_loss", "train_loss"):
        assert resumed[key] == straight[key], key


def test_fine_tuning_starts_from_the_float_runs_weights(tmp_path):
    float_run = str(tmp_path / "float")
    train.train_and_evaluate(_config(steps=4), float_run)
    mesh = sharding.create_mesh()
    config = _config(weight_bits=8, activation_bits=8, init_from=float_run)
    model = train_state.create_model(config, num_classes=10)
    state = finetune.init_from(
        train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                       total_steps=config.steps),
        float_run, config=config, mesh=mesh)
    from mobilenet import export

    saved = export.restore_variables(os.path.join(float_run, workdir.CHECKPOINT_SUBDIR))[1]
    for path, value in flatten_dict(saved["params"]).items():
        np.testing.assert_array_equal(np.asarray(flatten_dict(state.params)[path]), value)
    stats = flatten_dict(jax.device_get(state.batch_stats))
    for path, value in flatten_dict(saved["batch_stats"]).items():
        np.testing.assert_array_equal(np.asarray(stats[path]), value)
    assert int(state.step) == 0
    # And it trains: a QAT run from the float run.
    result = train.train_and_evaluate(config, str(tmp_path / "qat"))
    assert np.isfinite(result["test_loss"])


def test_fine_tuning_refuses_another_model_or_class_count(tmp_path):
    float_run = str(tmp_path / "float")
    train.train_and_evaluate(_config(steps=2, checkpoint_every=2), float_run)
    mesh = sharding.create_mesh()
    cases = [(_config(weight_bits=8, init_from=float_run, num_classes=12), "has 10 classes"),
             (_config(weight_bits=8, init_from=float_run, model="mobilenet_v1"),
              "trained tiny"),
             (_config(weight_bits=8, init_from=float_run, width=2.0), "parameters differ"),
             (_config(weight_bits=8, init_from=str(tmp_path / "nothing")), "no config.json")]
    for config, message in cases:
        model = train_state.create_model(config, num_classes=config.num_classes or 10)
        state = train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                               total_steps=config.steps)
        with pytest.raises(ConfigMismatch, match=message) as info:
            finetune.init_from(state, config.init_from, config=config, mesh=mesh)
        assert "\n" not in str(info.value) and str(info.value).startswith("train: --init-from")
