"""The example's persistent compilation cache: where it lives, failure modes, cache hits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from mobilenet.infra import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def restore_cache():
    """Leaves JAX's persistent cache off after the test, as the other tests expect."""
    yield
    compile_cache.disable()


def test_default_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_directory() == os.path.join(
        str(tmp_path), "jrelu6", "jax-compilation-cache")


def test_default_directory_without_xdg_is_under_home(monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert compile_cache.default_directory() == os.path.join(
        os.path.expanduser("~"), ".cache", "jrelu6", "jax-compilation-cache")


def test_enable_creates_the_folder_and_points_jax_at_it(tmp_path, restore_cache):
    folder = compile_cache.enable(str(tmp_path / "a" / "cache"))
    assert folder == str(tmp_path / "a" / "cache") and os.path.isdir(folder)
    assert jax.config.jax_compilation_cache_dir == folder


def test_enable_caches_every_executable(tmp_path, restore_cache):
    compile_cache.enable(str(tmp_path))
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1


def test_enable_writes_an_entry_for_a_compiled_function(tmp_path, restore_cache):
    folder = compile_cache.enable(str(tmp_path))
    jax.jit(lambda x: jnp.sin(x) * 3.0 - 1.0).lower(jnp.ones(7)).compile()
    assert any(name.endswith("-cache") for name in os.listdir(folder))


def test_unwritable_folder_warns_and_returns_none(tmp_path, restore_cache):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="compile_cache.enable: cannot write"):
        assert compile_cache.enable(str(blocker / "cache")) is None
    assert jax.config.jax_compilation_cache_dir is None


def test_disable_turns_the_cache_off(tmp_path):
    compile_cache.enable(str(tmp_path))
    compile_cache.disable()
    assert jax.config.jax_compilation_cache_dir is None


def test_compile_stats_count_compiles_inside_the_block_only():
    with compile_cache.CompileStats() as stats:
        jax.jit(lambda x: jnp.cos(x) + 2.5).lower(jnp.ones(5)).compile()
    inside = stats.counts()
    assert inside["compiles"] >= 1 and inside["compile_seconds"] > 0
    jax.jit(lambda x: jnp.sin(x) + 3.5).lower(jnp.ones(5)).compile()
    assert stats.counts() == inside  # The listeners are gone with the block.


_CHILD = textwrap.dedent("""
    import concurrent.futures, json, sys
    from mobilenet.infra import compile_cache
    compile_cache.enable(sys.argv[1])
    import jax, jax.numpy as jnp
    def compile_one(scale):
        jax.jit(lambda x: jnp.tanh(x @ x) * scale).lower(jnp.ones((16, 16))).compile()
    with compile_cache.CompileStats() as stats, concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(compile_one, [2.0, 3.0]))  # as train.py compiles its steps
    print(json.dumps(stats.counts()))
""")


@pytest.mark.slow
def test_a_second_process_loads_what_threads_of_the_first_compiled(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "examples")]),
               JAX_PLATFORMS="cpu")
    runs = []
    for _ in range(2):
        completed = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], env=env,
                                   capture_output=True, text=True, timeout=120, check=True)
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert runs[0]["cache_hits"] == 0 and runs[0]["cache_requests"] >= 2
    assert runs[1]["cache_hits"] == runs[1]["cache_requests"] >= 2
