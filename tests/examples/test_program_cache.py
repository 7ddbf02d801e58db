"""The compiled steps kept whole between runs (mobilenet/infra/program_cache.py).

The command's runs are real processes (a program saved by one is loaded by another);
the key and the files are tested in this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet.configs import get_config
from mobilenet.infra import compile_cache, program_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "examples", "train.py")
QUICK = ["--model", "tiny", "--data", "synthetic", "--synthetic-examples", "64",
         "--image-size", "16", "--batch-size", "16", "--eval-batch-size", "32", "--steps", "6",
         "--log-every", "3", "--no-plot"]
LOADED = "loaded whole from the program cache"


def _run(tmp_path, name, *extra, env=None):
    """The command in a fresh work directory under ``tmp_path``, with its own cache home."""
    # One device, as on a user's CPU: under the tests' eight, the native kernels' partitioning
    # rule (a Python callback) is in the programs, and those are not saved.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XLA_FLAGS": "",
           **(env or {})}
    done = subprocess.run([sys.executable, CLI, *QUICK, *extra, "--workdir", str(tmp_path / name)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _metrics(tmp_path, name):
    with open(tmp_path / name / "metrics.jsonl") as file:
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_second"}
                for line in file]


def _entries(tmp_path):
    folder = tmp_path / "cache" / "jrelu6" / "jax-compilation-cache" / program_cache.FOLDER
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_second_run_loads_its_programs_and_trains_the_same(tmp_path):
    first = _run(tmp_path, "a")
    (entry,) = _entries(tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == [
        "eval.program", "init.program", "init.result", "state.shapes", "train.program"]
    second = _run(tmp_path, "b")
    # Train and eval, and the initial state (not its program: a hit on the result skips it).
    assert LOADED not in first and f"2 programs and 1 result {LOADED}" in second
    assert _metrics(tmp_path, "b") == _metrics(tmp_path, "a")


def test_programs_first_found_in_the_persistent_cache_are_saved_whole(tmp_path):
    # The first run fills JAX's persistent cache only. An executable loaded from it and
    # serialized again would lack its functions' code (XLA:CPU): the second run must
    # compile its programs afresh, so that the third can run what the second saved.
    _run(tmp_path, "a", env={program_cache.ENV_SWITCH: "0"})
    assert _entries(tmp_path) == []
    _run(tmp_path, "b")
    assert LOADED in _run(tmp_path, "c")
    assert _metrics(tmp_path, "c") == _metrics(tmp_path, "a")


def test_a_host_only_setting_finds_the_same_programs(tmp_path):
    _run(tmp_path, "a")
    assert LOADED in _run(tmp_path, "b", "--log-every", "2")
    assert len(_entries(tmp_path)) == 1


def test_a_damaged_program_is_compiled_again(tmp_path):
    _run(tmp_path, "a")
    (entry,) = _entries(tmp_path)
    (entry / "train.program").write_bytes(b"not a program")
    second = _run(tmp_path, "b")
    # Eval, and init's result; train compiled again and saved.
    assert f"1 program and 1 result {LOADED}" in second
    assert (entry / "train.program").stat().st_size > 1000
    assert _metrics(tmp_path, "b") == _metrics(tmp_path, "a")


def test_the_switch_keeps_it_off(tmp_path):
    out = _run(tmp_path, "a", env={program_cache.ENV_SWITCH: "0"})
    assert LOADED not in out and _entries(tmp_path) == []


def test_without_the_compilation_cache_nothing_is_kept(tmp_path):
    _run(tmp_path, "a", "--no-compilation-cache")
    assert _entries(tmp_path) == []


def test_programs_with_python_callbacks_are_marked_and_later_found_in_jaxs_cache(tmp_path):
    two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert LOADED not in _run(tmp_path, "a", env=two)
    (entry,) = _entries(tmp_path)
    assert not (entry / "train.program").exists() and (entry / "train.unsaved").exists()
    second = _run(tmp_path, "b", env=two)
    persistent = int(re.search(r"(\d+) programs from the persistent cache", second).group(1))
    assert persistent >= 2  # The train and eval steps, no longer compiled past it.
    assert _metrics(tmp_path, "b") == _metrics(tmp_path, "a")


# --- the key, in this process ----------------------------------------------------------------


@pytest.fixture
def enabled(tmp_path):
    """The caches on in a folder of the test's own; off again afterwards."""
    compile_cache.enable(str(tmp_path / "jax"))
    program_cache.enable()
    yield tmp_path
    program_cache.enable(False)
    compile_cache.disable()


def _open(sources, config=None, *parts):
    return program_cache.open_cache(*parts, settings=config or get_config(),
                                    sources=[str(sources)], live={})


def test_it_is_off_unless_enabled(tmp_path):
    compile_cache.enable(str(tmp_path))
    try:
        assert _open(tmp_path) is None
    finally:
        compile_cache.disable()


def test_an_edited_source_file_is_another_key(enabled):
    sources = enabled / "src"
    sources.mkdir()
    (sources / "model.py").write_text("A = 1\n")
    before = _open(sources).folder
    (sources / "model.py").write_text("A = 2\n")
    assert _open(sources).folder != before


def test_host_only_settings_keep_the_key_and_the_others_change_it(enabled):
    key = _open(enabled).folder
    assert _open(enabled, get_config(seed=5, log_every=7, progress=False)).folder == key
    assert _open(enabled, get_config(width=0.75)).folder != key
    assert _open(enabled, get_config(), (1.0, 2.0)).folder != key  # The caller's parts.


def test_every_host_only_name_is_a_setting():
    names = {field.name for field in dataclasses.fields(get_config())}
    assert set(program_cache.HOST_ONLY) <= names


# --- the files, in this process ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Holder:
    """Like the train state: a static field holds an object that cannot be saved."""

    w: Any
    fn: Any


jax.tree_util.register_dataclass(_Holder, data_fields=["w"], meta_fields=["fn"])


def test_a_saved_tree_comes_back_with_its_live_objects(tmp_path):
    def fn():  # A local function: pickle cannot save it.
        return None

    tree = _Holder(w=jnp.ones((3, 2)), fn=fn)
    writer = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={"fn": fn})
    assert writer.shapes("state", lambda: tree).w == jax.ShapeDtypeStruct((3, 2), jnp.float32)
    reader = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={"fn": fn})
    loaded = reader.shapes("state", lambda: pytest.fail("built again"))
    assert loaded.fn is fn and loaded.w == jax.ShapeDtypeStruct((3, 2), jnp.float32)


def test_a_tree_holding_an_unnamed_object_is_not_saved(tmp_path):
    cache = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    cache.shapes("state", lambda: _Holder(w=jnp.ones(2), fn=lambda: None))
    assert not os.path.exists(os.path.join(cache.folder, "state.shapes"))


def test_a_compiled_program_round_trips(tmp_path):
    def step(x, y):
        return {"z": jnp.tanh(x) * y}

    args = (jnp.linspace(-2.0, 2.0, 5), jnp.float32(3.0))
    writer = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    fresh = writer.compile("step", jax.jit(step), *args)
    reader = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    loaded = reader.compile("step", jax.jit(step), *args)
    assert (writer.misses, reader.hits) == (1, 1)
    np.testing.assert_array_equal(loaded(*args)["z"], fresh(*args)["z"])


def _init(key):
    return {"w": jax.random.normal(key, (4, 3)), "step": jnp.zeros((), jnp.int32)}


def test_a_result_is_loaded_without_its_program(tmp_path):
    key = jax.random.key(3, impl="rbg")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    writer = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    fresh = writer.result("init", jax.jit(_init), key, sharding=sharding)
    os.remove(os.path.join(writer.folder, "init.program"))  # Not needed again.
    reader = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    loaded = reader.result("init", jax.jit(_init), key, sharding=sharding)
    assert (reader.results, reader.hits, reader.misses) == (1, 0, 0)
    assert loaded["w"].sharding == sharding and loaded["step"].dtype == jnp.int32
    np.testing.assert_array_equal(loaded["w"], fresh["w"])


def test_a_result_for_other_argument_values_is_computed_again(tmp_path):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    cache = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    cache.result("init", jax.jit(_init), jax.random.key(3, impl="rbg"), sharding=sharding)
    other = cache.result("init", jax.jit(_init), jax.random.key(4, impl="rbg"),
                         sharding=sharding)
    # The program, for the second seed; not the first seed's result.
    assert (cache.results, cache.hits) == (0, 1)
    np.testing.assert_array_equal(other["w"], _init(jax.random.key(4, impl="rbg"))["w"])


def test_a_result_over_the_limit_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "RESULT_LIMIT", 4 * 12)  # "w" alone is 48 bytes.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    cache = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    cache.result("init", jax.jit(_init), jax.random.key(3, impl="rbg"), sharding=sharding)
    assert sorted(os.listdir(cache.folder)) == ["init.program"]


def test_other_argument_shapes_are_a_miss(tmp_path):
    cache = program_cache.ProgramCache(str(tmp_path), "k" * 32, live={})
    cache.compile("step", jax.jit(jnp.sin), jnp.ones(3))
    loaded = cache.compile("step", jax.jit(jnp.sin), jnp.ones(4))
    assert cache.misses == 2
    np.testing.assert_allclose(loaded(jnp.ones(4)), np.sin(np.ones(4)), rtol=1e-6)


def test_only_the_newest_entries_are_kept(tmp_path):
    for index in range(program_cache.KEEP + 3):
        cache = program_cache.ProgramCache(str(tmp_path), f"{index:032d}", live={})
        cache.shapes("state", lambda: {"w": jnp.ones(1)})
        os.utime(cache.folder, (index, index))  # Older first.
    kept = sorted(os.listdir(tmp_path))
    assert len(kept) == program_cache.KEEP and kept[-1] == f"{program_cache.KEEP + 2:032d}"
