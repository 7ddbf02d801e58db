"""Tests of the MobileNet training example: its steps, its loop and its command line.

Tiny configurations: the ``tiny`` model on 16x16 synthetic images, a handful of
steps. conftest.py gives eight host devices, so every run here is data-parallel.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet import model_summary, sharding, train, train_state
from mobilenet.configs import get_config
from mobilenet.infra import checkpoints, distributed, host_memory, lifecycle, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "examples", "train.py")
IMAGE = (16, 16, 3)
# One configuration and one set of step options throughout, so that the compiled
# init, train and eval steps are shared between tests (they are cached by value).
STEP_OPTIONS = dict(num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, max_shift=2, flip=True,
                    label_smoothing=0.1)


def _config(**overrides):
    settings = dict(model="tiny", data="synthetic", image_size=IMAGE[0], synthetic_examples=64,
                    batch_size=16, eval_batch_size=32, steps=12, log_every=3, eval_every=0,
                    checkpoint_every=4, learning_rate=0.2, warmup_steps=0, progress=False,
                    plot=False)
    settings.update(overrides)
    return get_config(**settings)


def _state_and_step(mesh):
    config = _config()
    model = train_state.create_model(config, num_classes=10)
    state = train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                     total_steps=config.steps)
    return state, train_state.make_train_step(mesh=mesh, **STEP_OPTIONS)


def _batch(mesh, *, size=16, seed=0):
    rng = np.random.default_rng(seed)
    host = {"image": rng.integers(0, 256, (size, *IMAGE), dtype=np.uint8),
            "label": rng.integers(0, 10, size).astype(np.int32)}
    return distributed.place(host, sharding.batch_sharding(mesh))


def _fetch(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


# --- the steps -----------------------------------------------------------------------------


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    mesh = sharding.create_mesh()
    state, step = _state_and_step(mesh)
    batch = _batch(mesh)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.85 * losses[0], losses
    assert int(state.step) == 8


def test_eight_devices_give_the_loss_and_update_of_one():
    assert len(jax.devices()) == 8  # conftest.py
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = sharding.create_mesh(devices)
        state, step = _state_and_step(mesh)
        losses = []
        for seed in range(2):
            state, metrics = step(state, _batch(mesh, seed=seed))
            losses.append(float(metrics["loss"]))
        results.append((losses, _fetch(state.params), _fetch(state.batch_stats)))
    (losses8, params8, stats8), (losses1, params1, stats1) = results
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params8, params1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 stats8, stats1)


def _trained_state(mesh):
    state, step = _state_and_step(mesh)
    for seed in range(3):
        state, _ = step(state, _batch(mesh, seed=seed))
    return state


@functools.cache
def _apply(model, train_mode):
    if train_mode:
        return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


def _logits(state, images, *, train_mode, batch_stats=None):
    variables = {"params": state.params,
                 "batch_stats": state.batch_stats if batch_stats is None else batch_stats}
    return np.asarray(_apply(state.model, train_mode)(variables, images))


def test_eval_output_of_an_example_does_not_depend_on_its_batch():
    mesh = sharding.create_mesh()
    state = _trained_state(mesh)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, *IMAGE)).astype(np.float32)
    b = rng.normal(size=(8, *IMAGE)).astype(np.float32) * 3 + 1
    b[0] = a[0]
    np.testing.assert_allclose(_logits(state, a, train_mode=False)[0],
                               _logits(state, b, train_mode=False)[0], rtol=1e-5, atol=1e-6)
    # Train mode normalizes with the batch's statistics: there the companions matter.
    assert not np.allclose(_logits(state, a, train_mode=True)[0],
                           _logits(state, b, train_mode=True)[0], atol=1e-3)


def test_eval_uses_the_running_statistics():
    mesh = sharding.create_mesh()
    state = _trained_state(mesh)
    stats = _fetch(state.batch_stats)
    means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(stats)
             if "mean" in jax.tree_util.keystr(path)]
    assert means and any(np.abs(m).max() > 0 for m in means)  # Updated by training.
    shifted = jax.tree.map(lambda x: x + 1.0, stats)
    images = np.random.default_rng(2).normal(size=(8, *IMAGE)).astype(np.float32)
    assert not np.allclose(_logits(state, images, train_mode=False),
                           _logits(state, images, train_mode=False, batch_stats=shifted))
    np.testing.assert_allclose(_logits(state, images, train_mode=True),
                               _logits(state, images, train_mode=True, batch_stats=shifted),
                               rtol=1e-5, atol=1e-6)


# --- whole runs ----------------------------------------------------------------------------


def test_quiet_run_without_workdir_returns_the_final_metrics(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train.train_and_evaluate(_config(), None)
    assert {"test_accuracy", "test_loss", "train_loss", "steps"} <= set(result)
    assert result["steps"] == 12 and 0.0 <= result["test_accuracy"] <= 1.0
    assert np.isfinite([result["test_loss"], result["train_loss"]]).all()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert os.listdir(tmp_path) == []


def test_on_step_sees_the_state_after_every_step_without_changing_the_run():
    seen = []
    state, summary = train.fit(_config(steps=4), None, on_step=lambda done, state: seen.append(
        (done, int(state.step), jax.device_get(state.params))))
    assert [(done, step) for done, step, _ in seen] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert jax.tree.all(jax.tree.map(np.array_equal, seen[-1][2], jax.device_get(state.params)))
    _, plain = train.fit(_config(steps=4), None)
    assert (summary["test_loss"], summary["train_loss"]) == (plain["test_loss"],
                                                             plain["train_loss"])


class _Killed(Exception):
    """Stands for the process dying (SIGKILL) in the middle of training."""


def _dies_after(calls, monkeypatch):
    """Makes train_and_evaluate's train step raise after ``calls`` steps."""
    make = train_state.make_train_step

    def make_mortal(**options):
        step, count = make(**options), [0]

        def mortal(state, batch):
            count[0] += 1
            if count[0] > calls:
                raise _Killed
            return step(state, batch)

        return mortal

    monkeypatch.setattr(train_state, "make_train_step", make_mortal)


def test_a_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    config = _config()  # 12 steps, checkpoints every 4, metrics fetched every 3.
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    run = str(tmp_path / "killed")
    with monkeypatch.context() as patch:
        _dies_after(6, patch)  # Dies at step 7; the last checkpoint is step 4.
        with pytest.raises(_Killed):
            train.train_and_evaluate(config, run)
    assert sorted(os.listdir(os.path.join(run, workdir.CHECKPOINT_SUBDIR))) == ["4"]
    resumed = train.train_and_evaluate(config, run)
    assert resumed["resumed_from"] == 4
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps"):
        assert resumed[key] == straight[key], key
    with open(os.path.join(run, workdir.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    assert train_steps == [3, 6, 9, 12]  # Step 6's record from the killed run is not doubled.
    again = train.train_and_evaluate(config, run)  # Finished: only re-evaluates.
    assert again["resumed_from"] == 12 and again["test_loss"] == straight["test_loss"]
    assert again["train_loss"] == straight["train_loss"]


def _restore_latest(config, run):
    """The newest intact checkpoint of the work directory ``run``."""
    mesh = sharding.create_mesh()
    model = train_state.create_model(config, num_classes=10)
    abstract = train_state.abstract_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                                total_steps=config.steps)
    saved = checkpoints.Checkpoints(os.path.join(run, workdir.CHECKPOINT_SUBDIR), keep=2)
    try:
        restored, damaged = saved.restore_latest(checkpoints.state_tree(abstract))
    finally:
        saved.close()
    assert damaged == []
    return restored


def test_a_checkpoint_holds_the_train_states_arrays_not_its_model_or_optimizer():
    config = _config()
    model = train_state.create_model(config, num_classes=10)
    abstract = train_state.abstract_train_state(config, model, image_shape=IMAGE,
                                                mesh=sharding.create_mesh(),
                                                total_steps=config.steps)
    tree = checkpoints.state_tree(abstract)
    assert list(tree) == ["step", "params", "batch_stats", "opt_state", "rng", "metrics"]
    assert tree["params"] is abstract.params


def test_a_checkpoint_needs_no_device_buffer_once_saved_and_restores_as_asked(tmp_path):
    # The next training step donates the state's buffers while the save is still writing.
    mesh = sharding.create_mesh()
    tree = {"replicated": jax.device_put(jnp.arange(12.0).reshape(3, 4),
                                         sharding.replicated(mesh)),
            "split": jax.device_put(jnp.arange(16.0).reshape(8, 2),
                                    sharding.batch_sharding(mesh))}
    expected = jax.device_get(tree)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                            tree)
    saved = checkpoints.Checkpoints(str(tmp_path / "checkpoints"), keep=1)
    try:
        saved.save(1, tree, {"note": "x"})
        for leaf in jax.tree.leaves(tree):
            leaf.delete()
        saved.wait()
        restored, damaged = saved.restore_latest(abstract)
    finally:
        saved.close()
    assert damaged == [] and restored is not None and restored.meta == {"note": "x"}
    for name, leaf in restored.tree.items():
        assert leaf.sharding == abstract[name].sharding
        np.testing.assert_array_equal(jax.device_get(leaf), expected[name])


def test_checkpoints_of_a_new_directory_list_none_and_create_nothing(tmp_path):
    folder = tmp_path / "checkpoints"  # orbax is imported when a step is first saved or read.
    saved = checkpoints.Checkpoints(str(folder), keep=1)
    try:
        assert saved.all_steps() == [] and saved.latest() is None
        assert saved.restore_latest({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}) == (None, [])
        saved.wait()
    finally:
        saved.close()
    assert not folder.exists()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = _config(log_every=100)  # Only the checkpoint guard sees the NaN.
    mesh = sharding.create_mesh()
    poison = jax.jit(lambda s: s.replace(params=jax.tree.map(lambda p: p * jnp.nan, s.params)),
                     out_shardings=sharding.replicated(mesh))
    make = train_state.make_train_step

    def make_poisoned(**options):
        step, count = make(**options), [0]

        def poisoned(state, batch):
            count[0] += 1
            if count[0] == 7:  # Step 7's loss is NaN; checkpoint 8 must not be written.
                state = poison(state)
            return step(state, batch)

        return poisoned

    monkeypatch.setattr(train_state, "make_train_step", make_poisoned)
    run = str(tmp_path / "run")
    with pytest.raises(lifecycle.TrainingDiverged, match=r"NaN/inf at step 7.*step 4") as info:
        train.train_and_evaluate(config, run)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(os.path.join(run, workdir.CHECKPOINT_SUBDIR))) == ["4"]
    monkeypatch.setattr(train_state, "make_train_step", make)
    restored = _restore_latest(config, run)
    assert restored.step == 4 and restored.meta["step"] == 4
    assert int(restored.tree["step"]) == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_fetch(restored.tree)))


def test_a_batch_that_does_not_divide_over_the_devices_is_refused_before_writing(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(lifecycle.SetupError, match=r"batch_size 12 .* 8 devices"):
        train.train_and_evaluate(_config(batch_size=12), str(run_dir))
    assert not run_dir.exists()


def test_summary_ends_with_the_trainable_parameter_count():
    config = _config(num_classes=10)
    text = model_summary.summarize(config)
    model = train_state.create_model(config, num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 32, 32, 3)), train=False))
    count = model_summary.count_params(variables)
    assert text.splitlines()[-1] == f"trainable parameters: {count:,}"
    assert "stem" in text


# --- the command line ----------------------------------------------------------------------


def _cli(*args, cwd):
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _corrupt_cifar(directory):
    os.makedirs(directory)
    with open(os.path.join(directory, "batches.meta"), "wb") as f:
        f.write(b"\x80\x04garbage")
    return directory


@pytest.mark.parametrize("make_dir", [lambda d: os.path.join(d, "no_such_dir"),
                                      lambda d: _corrupt_cifar(os.path.join(d, "cifar"))],
                         ids=["missing", "corrupt"])
def test_a_bad_data_directory_exits_2_with_one_line_and_writes_nothing(tmp_path, make_dir):
    data_dir = make_dir(str(tmp_path))
    run_dir = tmp_path / "run"
    result = _cli("--data", "cifar10", "--data-dir", data_dir, "--workdir", str(run_dir),
                  cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line != host_memory.NOTE]
    assert len(lines) == 1 and lines[0].startswith("error: cifar10:"), result.stderr
    assert result.stdout == ""
    assert not run_dir.exists() and not (tmp_path / "runs").exists()
