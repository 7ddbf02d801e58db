"""examples/mobilenet/models.py: reference parameter counts, modes, dtypes, options."""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6
from mobilenet import depthwise, models
from mobilenet.model_summary import count_params

# Trainable parameters of the references: Keras MobileNet (V1), torchvision (V2, V3).
REFERENCE_COUNTS = {
    ("mobilenet_v1", 1000): 4_231_976,
    ("mobilenet_v2", 1000): 3_504_872,
    ("mobilenet_v3_small", 1000): 2_542_856,
    ("mobilenet_v3_large", 1000): 5_483_032,
    ("mobilenet_v1", 10): 3_217_226,
    ("mobilenet_v2", 10): 2_236_682,
    ("mobilenet_v3_small", 10): 1_528_106,
    ("mobilenet_v3_large", 10): 4_214_842,
}


def _shapes(model, size=32, batch=1):
    """The variables' shapes, traced only (no compile, no init cost)."""
    return jax.eval_shape(lambda key, x: model.init(key, x, train=False),
                          jax.random.key(0), jnp.zeros((batch, size, size, 3)))


def _images(batch=2, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)),
                       jnp.float32)


def _variables(model, seed=0):
    """Random variables of ``model``'s shapes (BN stats at their initial 0 and 1).

    Cheaper than ``model.init``, whose many random initialisers take XLA:CPU
    seconds to compile.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return jnp.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shapes(model))


@functools.cache  # One compiled function per model configuration, shared by the tests.
def _eval(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@functools.cache
def _train(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def tiny():
    """The tiny model and its variables."""
    model = models.create_model("tiny", num_classes=10, small_input=True)
    return model, _variables(model)


@pytest.mark.parametrize("name,num_classes", list(REFERENCE_COUNTS))
def test_parameter_count_matches_reference(name, num_classes):
    model = models.create_model(name, num_classes=num_classes)
    assert count_params(_shapes(model, 224)) == REFERENCE_COUNTS[name, num_classes]


@pytest.mark.parametrize("name", [n for n in models.MODELS if n != "tiny"])
def test_small_input_keeps_parameter_count(name):
    big = count_params(_shapes(models.create_model(name, num_classes=10)))
    small = count_params(_shapes(models.create_model(name, num_classes=10,
                                                            small_input=True)))
    assert small == big


LAST_FEATURES = {"mobilenet_v1": "block13_pointwise", "mobilenet_v2": "head",
                 "mobilenet_v3_small": "head", "mobilenet_v3_large": "head"}


@pytest.mark.parametrize("name", list(LAST_FEATURES))
@pytest.mark.parametrize("small_input,side", [(False, 1), (True, 4)])
def test_small_input_downsamples_by_8_not_32(name, small_input, side):
    model = models.create_model(name, num_classes=10, small_input=small_input)
    layer = LAST_FEATURES[name]

    def features(variables, x):
        _, state = model.apply(variables, x, train=False,
                               capture_intermediates=lambda m, _: m.name == layer)
        return state["intermediates"][layer]["__call__"][0]

    shape = jax.eval_shape(features, _shapes(model), jnp.zeros((1, 32, 32, 3))).shape
    assert shape[1:3] == (side, side)


@pytest.mark.parametrize("name,want", [
    ("mobilenet_v1", {"SAME"}),  # Keras: strided layers pad after only.
    ("mobilenet_v2", {((1, 1), (1, 1))}),  # torchvision: (k - 1) // 2 (1x1s are matmuls).
    ("mobilenet_v3_small", {((1, 1), (1, 1)), ((2, 2), (2, 2))}),
])
def test_padding_follows_the_reference(name, want):
    seen = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Conv, depthwise.DepthwiseConv)):
            seen.add(context.module.padding)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _shapes(models.create_model(name, depthwise="grouped"))
    assert seen == want


def test_width_multiplier_shrinks_model():
    full = count_params(_shapes(models.create_model("mobilenet_v2")))
    half = count_params(_shapes(models.create_model("mobilenet_v2",
                                                           width_multiplier=0.5)))
    assert half < full


@pytest.mark.parametrize(
    "value,want", [(32, 32), (32 * 0.75, 24), (10, 16), (72 * 0.35, 24), (1280 * 1.4, 1792)]
)
def test_make_divisible(value, want):
    assert models.make_divisible(value) == want


def test_models_registry_and_create_model():
    assert set(models.MODELS) == {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small",
                                  "mobilenet_v3_large", "tiny"}
    model = models.create_model("mobilenet_v3_small", num_classes=7, width_multiplier=0.5)
    assert isinstance(model, models.MobileNetV3Small)
    assert (model.num_classes, model.width_multiplier) == (7, 0.5)
    assert models.create_model("tiny", num_classes=10).num_classes == 10


def test_create_model_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"create_model: unknown model 'resnet'.*mobilenet_v2"):
        models.create_model("resnet")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depthwise": "fft"}, "depthwise must be one of"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"pointwise": "fft"}, "pointwise must be one of"),
        ({"width_multiplier": 0.0}, "width_multiplier must be > 0"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=f"TinyMobileNet: {match}"):
        _shapes(models.create_model("tiny", **kwargs))


def test_count_params_takes_variables_or_params(tiny):
    _, variables = tiny
    n = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert count_params(variables) == count_params(variables["params"]) == n
    assert "batch_stats" in variables  # ...which count_params leaves out.


def test_tiny_forward(tiny):
    model, variables = tiny
    logits = _eval(model)(variables, _images())  # No mutable=: eval must not write stats.
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_real_model_forward_at_32x32():
    model = models.create_model("mobilenet_v1", num_classes=10, width_multiplier=0.25,
                                small_input=True)
    x = _images()
    variables = _variables(model)
    logits, state = jax.jit(lambda v, x: model.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}))(
        variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])


def test_train_mode_updates_running_stats_with_momentum(tiny):
    model, variables = tiny
    x = _images()
    _, state = _train(model)(variables, x)
    stem_input = x  # The stem's conv output's batch mean gives the expected update.
    conv = nn.Conv(16, (3, 3), padding="SAME", use_bias=False)
    y = conv.apply({"params": variables["params"]["stem"]["conv"]}, stem_input)
    momentum = model.bn_momentum
    want = (1 - momentum) * jnp.mean(y, axis=(0, 1, 2))  # The initial mean is 0.
    np.testing.assert_allclose(state["batch_stats"]["stem"]["bn"]["mean"], want,
                               rtol=1e-4, atol=1e-6)


def test_eval_mode_uses_running_stats(tiny):
    model, variables = tiny
    x, apply = _images(batch=4), _eval(model)
    # Eval: each image's logits do not depend on the rest of the batch ...
    full = apply(variables, x)
    np.testing.assert_allclose(apply(variables, x[:2]), full[:2], rtol=1e-5, atol=1e-5)
    # ... and change when (only) the running statistics change.
    shifted = jax.tree.map(lambda s: s + 0.5, variables["batch_stats"])
    other = apply({**variables, "batch_stats": shifted}, x)
    assert not np.allclose(other, full)


def test_eval_mode_leaves_running_stats_alone(tiny):
    model, variables = tiny
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))(
        variables, _images())
    for a, b in zip(jax.tree.leaves(state["batch_stats"]),
                    jax.tree.leaves(variables["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_mode_uses_batch_stats(tiny):
    model, variables = tiny
    x, apply = _images(batch=4), _train(model)
    alone, _ = apply(variables, x[:2])
    together, _ = apply(variables, x)
    assert not np.allclose(alone, together[:2])


def test_without_batch_norm_convs_have_biases():
    model = models.create_model("tiny", batch_norm=False)
    variables = _shapes(model)
    assert set(variables) == {"params"}
    assert "bias" in variables["params"]["stem"]["conv"]
    assert "bias" in variables["params"]["block1"]["depthwise"]["conv"]


@pytest.mark.parametrize("train", [False, True])
def test_jax_nn_activations_equal_jrelu6(tiny, train):
    model, variables = tiny
    x = _images()
    other = models.create_model("tiny", num_classes=10, small_input=True, activation="jax.nn")
    run = _train if train else _eval
    for a, b in zip(jax.tree.leaves(run(model)(variables, x)),
                    jax.tree.leaves(run(other)(variables, x)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options", [{"depthwise": "grouped"}, {"depthwise": "shifted"},
                                     {"depthwise": "grouped", "pointwise": "conv"}])
def test_convolution_implementations_agree_in_model(tiny, options):
    model, variables = tiny
    x = _images()
    other = models.create_model("tiny", num_classes=10, small_input=True, **options)
    np.testing.assert_allclose(_eval(model)(variables, x), _eval(other)(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_activations_are_named_jrelu6_layers_with_the_settings():
    model = models.create_model("tiny", grad_at_zero=1.0, grad_at_six=0.5)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (jrelu6.linen.ReLU6, jrelu6.linen.HardSwish,
                                       jrelu6.linen.HardSigmoid)):
            m = context.module
            seen.append((type(m).__name__, m.grad_at_zero, m.grad_at_six))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _shapes(model)
    kinds = {kind for kind, _, _ in seen}
    assert kinds == {"ReLU6", "HardSwish", "HardSigmoid"}
    assert all((g0, g6) == (1.0, 0.5) for _, g0, g6 in seen)


def test_boundary_hits_are_recorded_per_layer(tiny):
    model, variables = tiny
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["boundary_hits"]))(
        variables, _images())
    rows = jrelu6.summarize_boundary_hits(state)
    assert any(row.layer.startswith("stem") for row in rows)
    assert len(rows) >= 5


def test_grad_settings_may_be_traced(tiny):
    model, variables = tiny
    x = _images()

    def logits(g0):
        m = models.create_model("tiny", num_classes=10, small_input=True, grad_at_zero=g0)
        return m.apply(variables, x, train=False)

    np.testing.assert_allclose(jax.jit(logits)(jnp.float32(1.0)), _eval(model)(variables, x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_mixed_precision_float32_params_and_logits(dtype):
    model = models.create_model("tiny", num_classes=10, small_input=True, dtype=dtype)
    assert {p.dtype for p in jax.tree.leaves(_shapes(model))} == {jnp.dtype(jnp.float32)}
    logits, state = _train(model)(_variables(model), _images())
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    assert {s.dtype for s in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}


def test_widened_half_precision_relu6_is_the_half_precision_one_bit_for_bit():
    # ConvBN applies a half-precision activation to the widened values and rounds once
    # (one fused pass on XLA:CPU); for relu6 that must change nothing: every bfloat16
    # value, its relu6 and its derivative (kinks included).
    x = jax.lax.bitcast_convert_type(jnp.arange(2**16, dtype=jnp.uint32).astype(jnp.uint16),
                                     jnp.bfloat16)
    x = x[~jnp.isnan(x)]

    def widened(v):
        return jrelu6.relu6(v.astype(jnp.float32)).astype(v.dtype)

    for f in (lambda g: g, lambda g: jax.vmap(jax.grad(g))):
        ours, plain = f(widened)(x), f(jrelu6.relu6)(x)
        assert ours.dtype == plain.dtype == jnp.bfloat16
        np.testing.assert_array_equal(jax.lax.bitcast_convert_type(ours, jnp.uint16),
                                      jax.lax.bitcast_convert_type(plain, jnp.uint16))


def test_dropout_needs_rng_and_is_off_in_eval(tiny):
    plain, variables = tiny
    model = models.create_model("tiny", num_classes=10, small_input=True, dropout_rate=0.5)
    x = _images()
    np.testing.assert_array_equal(_eval(model)(variables, x), _eval(plain)(variables, x))
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                  rngs={"dropout": key})[0])
    assert not np.allclose(train(variables, x, jax.random.key(1)),
                           train(variables, x, jax.random.key(2)))
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]),
                       variables)


def _torchvision_models():
    """torchvision.models, or a skip where it is missing or does not load."""
    try:
        import torchvision.models as tv_models
    except Exception as error:  # noqa: BLE001 - a broken install raises RuntimeError too.
        pytest.skip(f"torchvision unavailable: {error!r}")
    return tv_models


def _torch_layers_in_order(module):
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    return [m for m in module.modules() if isinstance(m, kinds)]


def _flax_layers_in_call_order(model, variables, x):
    order = []

    def record(next_fun, args, kwargs, context):
        kinds = (nn.Conv, nn.Dense, nn.BatchNorm, depthwise.DepthwiseConv,
                 depthwise.PointwiseConv)
        if isinstance(context.module, kinds) and context.module.path not in order:
            order.append(context.module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return order


def _copy_torch_weights(torch_model, model, x):
    """The flax variables holding ``torch_model``'s weights (same layers, same order)."""
    import torch

    shapes = _shapes(model, x.shape[1])
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    paths = _flax_layers_in_call_order(model, shapes, jnp.asarray(x))
    layers = _torch_layers_in_order(torch_model)
    assert len(paths) == len(layers)
    for path, layer in zip(paths, layers):
        params, stats = variables["params"], variables["batch_stats"]
        for key in path:
            params, stats = params[key], stats.get(key, {})
        tensors = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
        if isinstance(layer, torch.nn.BatchNorm2d):
            params["scale"], params["bias"] = tensors["weight"], tensors["bias"]
            stats["mean"], stats["var"] = tensors["running_mean"], tensors["running_var"]
            continue
        weight = tensors["weight"]
        if params["kernel"].ndim == 2:  # Dense: a Linear, or a 1x1 Conv2d (squeeze-excite).
            weight = weight.reshape(weight.shape[:2]).T
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            weight = weight.transpose(2, 3, 1, 0)
        assert params["kernel"].shape == weight.shape, path
        params["kernel"] = weight
        if "bias" in tensors:
            params["bias"] = tensors["bias"]
    return variables


@pytest.mark.parity
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_matches_torchvision_numerically(name):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: parity with torchvision")
    tv_models = _torchvision_models()
    torch.manual_seed(0)
    torch_model = getattr(tv_models, name)(num_classes=10)
    rng = np.random.default_rng(0)

    def batch(n):  # Images of different contrasts and a gradient, so the logits differ.
        return (rng.normal(size=(n, 57, 57, 3)) * rng.uniform(0.5, 3.0, size=(n, 1, 1, 1))
                + np.linspace(-1.0, 2.0, 57).reshape(1, 57, 1, 1)).astype(np.float32)

    with torch.no_grad():  # Running statistics that fit the data: every layer then matters.
        for layer in torch_model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.reset_running_stats()
                layer.momentum = None
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0.0, 0.2)
        torch_model.train()
        for _ in range(2):
            torch_model(torch.from_numpy(batch(8).transpose(0, 3, 1, 2)))
        torch_model.eval()
        x = batch(2)
        want = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = models.create_model(name, num_classes=10)
    variables = _copy_torch_weights(torch_model, model, x)
    got = _eval(model)(variables, jnp.asarray(x))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    assert np.abs(want[0] - want[1]).max() > 0.1 * scale  # The check has teeth.
