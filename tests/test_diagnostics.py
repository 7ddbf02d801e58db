"""The boundary-hit diagnostic: exact counts of inputs on relu6's kinks, per layer."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jrelu6
import jrelu6.linen
import jrelu6.nnx

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _counts(hits):
    return tuple(int(n) for n in hits)


def _with_hits(dtype, *, zeros, sixes, others=37, seed=0):
    """A shuffled array with exactly ``zeros`` 0s and ``sixes`` 6s, the rest off the kinks."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform(-10.0, 10.0, others)
    rest = rest[(rest != 0) & (np.abs(rest - 6) > 0.1)]  # Stays off 6 after rounding.
    x = np.concatenate([np.zeros(zeros), np.full(sixes, 6.0), rest])
    return jnp.asarray(rng.permutation(x), dtype), len(x)


# --- boundary_hits ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zeros,sixes", [(0, 0), (3, 0), (0, 5), (4, 7)])
def test_counts_hand_made_hits(dtype, zeros, sixes):
    x, n = _with_hits(dtype, zeros=zeros, sixes=sixes)
    assert _counts(jrelu6.boundary_hits(x)) == (zeros, sixes, n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_counts_are_exact_integers(dtype):
    hits = jrelu6.boundary_hits(jnp.zeros((3, 5), dtype))
    assert all(h.dtype == jnp.int32 and h.shape == () for h in hits)
    assert _counts(hits) == (15, 0, 15)


def test_counts_under_jit_equal_eager():
    x, _ = _with_hits(jnp.bfloat16, zeros=2, sixes=3)
    assert _counts(jax.jit(jrelu6.boundary_hits)(x)) == _counts(jrelu6.boundary_hits(x))


def test_negative_zero_counts_and_nan_does_not():
    x = jnp.array([-0.0, 0.0, jnp.nan, 6.0, jnp.inf, -jnp.inf])
    assert _counts(jrelu6.boundary_hits(x)) == (2, 1, 6)


def test_bfloat16_rounds_onto_the_kink_float32_does_not():
    x = np.array([6.01, 5.99, 6.0 + 1e-6])
    assert _counts(jrelu6.boundary_hits(jnp.asarray(x, jnp.bfloat16))) == (0, 3, 3)
    assert _counts(jrelu6.boundary_hits(jnp.asarray(x, jnp.float32))) == (0, 0, 3)


def test_shift_counts_the_hard_activations_kinks():
    x = jnp.array([-4.0, -3.0, -3.0, 0.0, 3.0, 6.0])
    assert _counts(jrelu6.boundary_hits(x, shift=3.0)) == (2, 1, 6)


def test_shift_is_added_in_the_input_dtype():
    # In bfloat16, 2.99 + 3 rounds to 6 (the kink); in float32 it does not.
    x = np.array([2.99])
    assert int(jrelu6.boundary_hits(jnp.asarray(x, jnp.bfloat16), shift=3).at_cap) == 1
    assert int(jrelu6.boundary_hits(jnp.asarray(x, jnp.float32), shift=3).at_cap) == 0


def test_cap_sets_the_upper_kink():
    x = jnp.array([0.0, 2.0, 2.0, 6.0])
    assert _counts(jrelu6.boundary_hits(x, cap=2.0)) == (1, 2, 4)


def test_integer_input_is_counted():
    assert _counts(jrelu6.boundary_hits(jnp.array([-1, 0, 6, 7], jnp.int8))) == (1, 1, 4)


@pytest.mark.parametrize(
    "fn,shift",
    [(jrelu6.relu6, 0.0), (jrelu6.hard_sigmoid, 3.0), (jrelu6.hard_swish, 3.0)],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_hits_are_where_the_convention_changes_the_gradient(fn, shift, dtype):
    # The inputs whose derivative depends on (grad_at_zero, grad_at_six) are
    # exactly the counted ones.
    x = jnp.round(jax.random.uniform(jax.random.key(0), (400,), minval=-9, maxval=9) * 4) / 4
    x = x.astype(dtype)

    def grad(g0, g6):
        return jax.vmap(jax.grad(lambda v: fn(v, grad_at_zero=g0, grad_at_six=g6)))(x)

    lower = int(jnp.sum(grad(1.0, 0.0) != grad(0.0, 0.0)))
    upper = int(jnp.sum(grad(0.0, 1.0) != grad(0.0, 0.0)))
    hits = jrelu6.boundary_hits(x, shift=shift)
    assert (lower, upper) == (int(hits.at_zero), int(hits.at_cap))
    assert lower > 0 and upper > 0


def test_sharded_input_gives_the_same_counts():
    devices = np.array(jax.devices())
    assert len(devices) == 8  # conftest forces eight host devices.
    mesh = Mesh(devices, ("batch",))
    x, _ = _with_hits(jnp.bfloat16, zeros=5, sixes=9, others=8 * 40 - 14)
    x = x[: 8 * (x.shape[0] // 8)].reshape(8, -1)
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
    assert len(sharded.sharding.device_set) == 8
    expected = _counts(jrelu6.boundary_hits(np.asarray(x)))
    assert _counts(jax.jit(jrelu6.boundary_hits)(sharded)) == expected
    assert _counts(jrelu6.boundary_hits(sharded)) == expected


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"x": None}, TypeError, "boundary_hits"),
        ({"x": jnp.array([1 + 1j])}, TypeError, "boundary_hits.*complex"),
        ({"x": jnp.zeros(2), "cap": 0.0}, ValueError, "boundary_hits: cap must be > 0"),
        ({"x": jnp.zeros(2), "shift": jnp.zeros(2)}, ValueError, "shift must be a scalar"),
    ],
)
def test_bad_arguments_raise_naming_the_function(kwargs, error, match):
    with pytest.raises(error, match=match):
        jrelu6.boundary_hits(**kwargs)


# --- linen ------------------------------------------------------------------

# x -> ReLU6 (hits: one 0, one 6) -> relu6(x) = [0, 6, 6, 0, 3, 1]
#   -> HardSwish, whose relu6 sees relu6(x) + 3 = [3, 9, 9, 3, 6, 4] (one 6).
X = jnp.array([[0.0, 6.0, 7.0, -1.0, 3.0, 1.0]])
EXPECTED = [(1, 1, 6), (0, 1, 6)]


def _linen_model():
    return nn.Sequential([jrelu6.linen.ReLU6(), jrelu6.linen.HardSwish()])


def _rows_counts(rows):
    return [(r.at_zero, r.at_cap, r.n) for r in rows]


def test_linen_records_each_layer():
    y, state = _linen_model().apply({}, X, mutable=["boundary_hits"])
    rows = jrelu6.summarize_boundary_hits(state)
    assert [r.layer for r in rows] == ["layers_0", "layers_1"]
    assert _rows_counts(rows) == EXPECTED
    np.testing.assert_array_equal(y, _linen_model().apply({}, X))


def test_linen_records_under_jit():
    apply = jax.jit(lambda x: _linen_model().apply({}, x, mutable=["boundary_hits"]))
    _, state = apply(X)
    assert _rows_counts(jrelu6.summarize_boundary_hits(state)) == EXPECTED


def test_linen_records_inside_a_gradient():
    def loss(x):
        y, state = _linen_model().apply({}, x, mutable=["boundary_hits"])
        return jnp.sum(y), state

    _, state = jax.jit(jax.grad(loss, has_aux=True))(X)
    assert _rows_counts(jrelu6.summarize_boundary_hits(state)) == EXPECTED


def test_linen_records_nothing_unless_asked():
    model = nn.Sequential([nn.Dense(6), jrelu6.linen.ReLU6()])
    variables = model.init(jax.random.key(0), X)
    assert set(variables) == {"params"}
    _, state = model.apply(variables, X, mutable=["batch_stats"])
    assert "boundary_hits" not in state
    assert not isinstance(model.apply(variables, X), tuple)


def test_linen_sums_repeated_calls_of_one_module():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            act = jrelu6.linen.ReLU6()
            return act(act(x))

    _, state = Twice().apply({}, X, mutable=["boundary_hits"])
    (row,) = jrelu6.summarize_boundary_hits(state)
    assert (row.at_zero, row.at_cap, row.n) == (3, 3, 12)


def _instructions(compiled_text):
    """(shape, opcode) of every HLO instruction, without names or source locations."""
    return re.findall(r"= (\S+) ([a-z][\w-]*)\(", compiled_text)


def test_linen_default_path_compiles_like_the_bare_functions():
    with_modules = nn.Sequential(
        [nn.Dense(6), jrelu6.linen.ReLU6(), nn.Dense(6), jrelu6.linen.HardSwish()]
    )
    with_functions = nn.Sequential([nn.Dense(6), jrelu6.relu6, nn.Dense(6), jrelu6.hard_swish])
    variables = with_modules.init(jax.random.key(0), X)

    def compiled(model, **kwargs):
        def loss(v, x):
            out = model.apply(v, x, **kwargs)
            return (jnp.sum(out[0]), out[1]) if kwargs else (jnp.sum(out), None)

        step = jax.jit(jax.grad(loss, has_aux=True))
        return step.lower(variables, X).compile().as_text()

    plain = _instructions(compiled(with_functions))
    assert _instructions(compiled(with_modules)) == plain
    # Asked for, the counts are computed on the device (not optimised away).
    recording = compiled(with_modules, mutable=["boundary_hits"])
    assert len(_instructions(recording)) > len(plain)
    assert "callback" not in recording.lower()


# --- nnx --------------------------------------------------------------------


def _nnx_model():
    return nnx.Sequential(jrelu6.nnx.ReLU6(), jrelu6.nnx.HardSwish())


def test_nnx_records_each_layer():
    model = _nnx_model()
    model.set_attributes(record_boundary_hits=True)
    model(X)
    rows = jrelu6.summarize_boundary_hits(nnx.pop(model, nnx.Intermediate))
    assert [r.layer for r in rows] == ["layers/0", "layers/1"]
    assert _rows_counts(rows) == EXPECTED
    assert jrelu6.summarize_boundary_hits(nnx.state(model, nnx.Intermediate)) == []


def test_nnx_records_under_nnx_jit_and_stops_when_unset():
    model = _nnx_model()
    forward = nnx.jit(lambda m, x: m(x))
    forward(model, X)
    assert jrelu6.summarize_boundary_hits(nnx.state(model, nnx.Intermediate)) == []
    model.set_attributes(record_boundary_hits=True)
    forward(model, X)
    rows = jrelu6.summarize_boundary_hits(nnx.pop(model, nnx.Intermediate))
    assert _rows_counts(rows) == EXPECTED
    model.set_attributes(record_boundary_hits=False)
    forward(model, X)
    assert jrelu6.summarize_boundary_hits(nnx.state(model, nnx.Intermediate)) == []


def test_nnx_sums_calls_until_popped():
    model = _nnx_model()
    model.set_attributes(record_boundary_hits=True)
    model(X)
    model(X)
    rows = jrelu6.summarize_boundary_hits(nnx.pop(model, nnx.Intermediate))
    assert _rows_counts(rows) == [tuple(2 * n for n in e) for e in EXPECTED]


@pytest.mark.skipif(not hasattr(nnx, "view"), reason="nnx.view needs flax >= 0.12")
def test_nnx_view_turns_recording_on_for_a_copy():
    model = _nnx_model()
    recording = nnx.view(model, record_boundary_hits=True)
    recording(X)
    assert _rows_counts(jrelu6.summarize_boundary_hits(nnx.state(recording, nnx.Intermediate))) == (
        EXPECTED
    )
    assert not model.layers[0].record_boundary_hits


def test_nnx_default_path_compiles_like_the_bare_functions():
    def compiled(*layers):
        graphdef, state = nnx.split(nnx.Sequential(nnx.Linear(6, 6, rngs=nnx.Rngs(0)), *layers))

        def loss(state, x):
            return jnp.sum(nnx.merge(graphdef, state)(x))

        return jax.jit(jax.grad(loss)).lower(state, X).compile().as_text()

    assert _instructions(compiled(jrelu6.nnx.ReLU6(), jrelu6.nnx.HardSwish())) == (
        _instructions(compiled(jrelu6.relu6, jrelu6.hard_swish))
    )


@pytest.mark.parametrize("name", ["ReLU6", "CappedReLU", "HardSigmoid", "HardSwish"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linen_and_nnx_record_the_same_counts(name, dtype):
    x = (jnp.arange(-40, 40, dtype=jnp.float32) / 4).astype(dtype)
    settings = {"cap": 2.0} if name == "CappedReLU" else {}
    linen_module = getattr(jrelu6.linen, name)(**settings)
    nnx_module = getattr(jrelu6.nnx, name)(**settings)
    _, state = linen_module.apply({}, x, mutable=["boundary_hits"])
    nnx_module.set_attributes(record_boundary_hits=True)
    nnx_module(x)
    (linen_row,) = jrelu6.summarize_boundary_hits(state)
    (nnx_row,) = jrelu6.summarize_boundary_hits(nnx.pop(nnx_module, nnx.Intermediate))
    assert linen_row == nnx_row
    assert linen_row.at_zero == 1 and linen_row.at_cap == 1


def test_nnx_modules_stay_parameter_free_while_recording():
    model = _nnx_model()
    model.set_attributes(record_boundary_hits=True)
    model(X)
    assert nnx.state(model, nnx.Param) == nnx.State({})


# --- summaries --------------------------------------------------------------


def test_summary_sorts_layers_naturally_and_computes_fractions():
    hits = jrelu6.BoundaryHits
    collected = {
        "layers_10": {"boundary_hits": hits(jnp.int32(1), jnp.int32(0), jnp.int32(4))},
        "layers_2": {"boundary_hits": hits(jnp.int32(0), jnp.int32(2), jnp.int32(8))},
        "params": {"kernel": jnp.ones(3)},  # Ignored.
    }
    rows = jrelu6.summarize_boundary_hits({"boundary_hits": collected})
    assert rows == [
        jrelu6.BoundaryRow("layers_2", 8, 0, 2, 0.0, 0.25),
        jrelu6.BoundaryRow("layers_10", 4, 1, 0, 0.25, 0.0),
    ]


def test_table_has_a_header_a_row_per_layer_and_a_total():
    _, state = _linen_model().apply({}, X, mutable=["boundary_hits"])
    lines = jrelu6.format_boundary_hits(jrelu6.summarize_boundary_hits(state)).splitlines()
    assert lines[0].startswith("| layer |") and lines[1].startswith("| --- |")
    names = [line.split(" | ")[0] for line in lines[2:]]
    assert names == ["| layers_0", "| layers_1", "| all layers"]
    assert lines[-1] == "| all layers | 12 | 1 | 2 | 8.33e-02 | 1.67e-01 |"
    assert jrelu6.format_boundary_hits(state) == "\n".join(lines)


def test_empty_summary():
    assert jrelu6.summarize_boundary_hits({}) == []
    assert len(jrelu6.format_boundary_hits([]).splitlines()) == 2


# --- stacks of layers: nn.scan and nnx.scan ----------------------------------

SCAN_X = jnp.array([[0.0, 6.0, 7.0, 1.0, 2.0]])
SCAN_LENGTH = 4


def _scan_expected():
    """The rows of a stack whose layer i maps x to relu6(x) - 1, unrolled by hand."""
    rows, x = [], SCAN_X
    for _ in range(SCAN_LENGTH):
        rows.append(_counts(jrelu6.boundary_hits(x)))
        x = jrelu6.relu6(x) - 1.0
    return rows


class _LinenLayer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        scale = self.param("scale", nn.initializers.ones, ())  # Something to stack.
        return jrelu6.linen.ReLU6()(x) * scale - 1.0, None


def _linen_stack(variable_axes):
    stack = nn.scan(_LinenLayer, variable_axes=variable_axes, split_rngs={"params": True},
                    length=SCAN_LENGTH)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return stack(name="stack")(x, None)[0]

    model = Model()
    variables = model.init(jax.random.key(0), SCAN_X)
    return model.apply(variables, SCAN_X, mutable=["boundary_hits"])[1]


def test_summary_gives_a_row_per_layer_of_a_linen_scan():
    hits = _linen_stack({"params": 0, "boundary_hits": 0})
    assert hits["boundary_hits"]["stack"]["ReLU6_0"]["boundary_hits"].total.shape == (4,)
    rows = jrelu6.summarize_boundary_hits(hits)
    assert [r.layer for r in rows] == [f"stack/ReLU6_0[{i}]" for i in range(SCAN_LENGTH)]
    assert [(r.at_zero, r.at_cap, r.n) for r in rows] == _scan_expected()
    assert "| stack/ReLU6_0[3] | 5 |" in jrelu6.format_boundary_hits(hits)


def test_linen_scan_records_nothing_unless_its_variable_axes_name_the_collection():
    assert _linen_stack({"params": 0}) == {}


class _NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones(()))  # Something to stack.
        self.act = jrelu6.nnx.ReLU6()

    def __call__(self, x):
        return self.act(x) * self.scale - 1.0


def test_summary_gives_a_row_per_layer_of_an_nnx_scan():
    @nnx.split_rngs(splits=SCAN_LENGTH)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return _NnxBlock(rngs)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
        return block(x)

    blocks = create(nnx.Rngs(0))
    blocks.set_attributes(record_boundary_hits=True)
    forward(SCAN_X, blocks)
    rows = jrelu6.summarize_boundary_hits(nnx.pop(blocks, nnx.Intermediate))
    assert [r.layer for r in rows] == [f"act[{i}]" for i in range(SCAN_LENGTH)]
    assert [(r.at_zero, r.at_cap, r.n) for r in rows] == _scan_expected()


def test_summary_names_each_index_of_a_two_level_stack():
    hits = jrelu6.BoundaryHits(*(jnp.arange(6).reshape(2, 3),) * 3)
    rows = jrelu6.summarize_boundary_hits({"block": hits})
    assert [r.layer for r in rows][:4] == [
        "block[0, 0]", "block[0, 1]", "block[0, 2]", "block[1, 0]"
    ]
    assert [r.n for r in rows] == list(range(6))


@pytest.mark.parametrize("hits", [
    jrelu6.BoundaryHits(jnp.zeros(2, jnp.int32), jnp.zeros(3, jnp.int32), jnp.zeros(2, jnp.int32)),
    jrelu6.BoundaryHits(jnp.zeros(()), jnp.zeros(()), jnp.zeros(())),
    jrelu6.BoundaryHits("a", "b", "c"),
])
def test_summary_refuses_malformed_counts_naming_itself(hits):
    with pytest.raises(TypeError, match=r"^summarize_boundary_hits: the counts of 'act'"):
        jrelu6.summarize_boundary_hits({"act": hits})
