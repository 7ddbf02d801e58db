"""Tests of examples/mobilenet/input_pipeline.py: loaders, the data order, batches, augmentation.

(CIFAR-10's file checks live in examples/mobilenet/infra/cifar10.py.)
"""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilenet import input_pipeline
from mobilenet.configs import default
from mobilenet.infra import cifar10, datasets


def write_fake_cifar10(directory: str, *, per_batch: int = 4, seed: int = 0) -> dict:
    """Writes CIFAR-10's python-pickle layout with ``per_batch`` images per file.

    Returns:
      ``{file name: (data uint8 [N, 3072], labels list)}`` as written.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name in (*cifar10.TRAIN_FILES, cifar10.TEST_FILE):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f)
        written[name] = (data, labels)
    with open(os.path.join(directory, cifar10.META_FILE), "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)],
                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f)
    return written


def _mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


# --- loaders -------------------------------------------------------------------------------


def test_cifar10_loader_reads_the_pickle_layout(tmp_path):
    written = write_fake_cifar10(str(tmp_path), per_batch=4)
    data = datasets.load_cifar10(str(tmp_path))
    assert data.train_images.shape == (20, 32, 32, 3)
    assert data.test_images.shape == (4, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    assert data.num_classes == 10 and data.flip
    # Rows are red, green and blue 32x32 planes: pixel (row 1, col 2) of image 0.
    raw, labels = written["data_batch_1"]
    np.testing.assert_array_equal(data.train_images[0, 1, 2],
                                  raw[0, [1 * 32 + 2, 1024 + 1 * 32 + 2, 2048 + 1 * 32 + 2]])
    np.testing.assert_array_equal(data.train_labels[:4], labels)
    np.testing.assert_array_equal(data.test_labels, written["test_batch"][1])


def test_cifar10_loader_accepts_the_archive_directory(tmp_path):
    write_fake_cifar10(str(tmp_path / cifar10.SUBDIR), per_batch=2)
    assert datasets.load_cifar10(str(tmp_path)).train_images.shape[0] == 10


def _remove_test_batch(d):
    os.remove(os.path.join(d, "test_batch"))


def _garble_batch(d):
    with open(os.path.join(d, "data_batch_3"), "wb") as f:
        f.write(b"not a pickle at all")


def _truncate_batch(d):
    path = os.path.join(d, "data_batch_2")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def _wrong_shape(d):
    with open(os.path.join(d, "data_batch_4"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)


def _bad_labels(d):
    with open(os.path.join(d, "data_batch_5"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)


def _no_meta(d):
    os.remove(os.path.join(d, "batches.meta"))


@pytest.mark.parametrize("damage, fragment", [
    (_remove_test_batch, "missing file"),
    (_garble_batch, "cannot read"),
    (_truncate_batch, "cannot read"),
    (_wrong_shape, "uint8 [N, 3072]"),
    (_bad_labels, "labels outside"),
    (_no_meta, "batches.meta"),
])
def test_cifar10_loader_rejects_a_corrupt_directory_in_one_line(tmp_path, damage, fragment):
    write_fake_cifar10(str(tmp_path), per_batch=2)
    damage(str(tmp_path))
    with pytest.raises(datasets.DataError, match="cifar10") as info:
        datasets.load_cifar10(str(tmp_path))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_cifar10_loader_rejects_a_missing_directory(tmp_path):
    with pytest.raises(datasets.DataError, match="does not exist"):
        datasets.load_cifar10(str(tmp_path / "nowhere"))


def test_cifar10_needs_a_data_dir():
    with pytest.raises(datasets.DataError, match="--data-dir"):
        datasets.load_dataset("cifar10")


def test_digits_are_32x32x3_uint8_with_a_fixed_split():
    a, b = datasets.load_digits(), datasets.load_digits()
    assert a.train_images.shape == (1437, 32, 32, 3) and a.test_images.shape == (360, 32, 32, 3)
    assert a.train_images.dtype == np.uint8 and a.num_classes == 10 and not a.flip
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert set(np.unique(a.test_labels)) == set(range(10))
    assert len(a.mean) == 3 and all(s > 0 for s in a.std)


def test_synthetic_data_is_deterministic_per_seed():
    a = datasets.make_synthetic(num_train=32, num_test=8, image_size=16, seed=1)
    b = datasets.make_synthetic(num_train=32, num_test=8, image_size=16, seed=1)
    c = datasets.make_synthetic(num_train=32, num_test=8, image_size=16, seed=2)
    assert a.train_images.shape == (32, 16, 16, 3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, c.train_images)


# --- order and batches ---------------------------------------------------------------------


def test_each_epoch_visits_distinct_examples_in_a_seeded_order():
    steps = default.steps_per_epoch(100, 8)
    epoch = [input_pipeline.batch_indices(100, batch_size=8, seed=3, step=s) for s in range(steps)]
    seen = np.concatenate(epoch)
    assert len(seen) == 96 and len(set(seen.tolist())) == 96
    next_epoch = input_pipeline.batch_indices(100, batch_size=8, seed=3, step=steps)
    assert not np.array_equal(next_epoch, epoch[0])
    other_seed = input_pipeline.batch_indices(100, batch_size=8, seed=4, step=0)
    assert not np.array_equal(other_seed, epoch[0])


def test_a_batch_is_a_function_of_its_step_alone():
    a = input_pipeline.batch_indices(100, batch_size=8, seed=0, step=30)
    b = input_pipeline.batch_indices(100, batch_size=8, seed=0, step=30)
    assert a.shape == (8,) and np.array_equal(a, b)


def test_batch_larger_than_the_data_is_an_error():
    with pytest.raises(ValueError, match="batch_size 16"):
        default.steps_per_epoch(10, 16)


def test_train_batches_resume_at_any_step_with_the_same_data():
    data = datasets.make_synthetic(num_train=40, num_test=8, image_size=8)
    sharding = NamedSharding(_mesh(), PartitionSpec("data"))
    from_zero = input_pipeline.train_batches(data, batch_size=16, seed=0, start_step=0,
                                             sharding=sharding)
    batches = [next(from_zero) for _ in range(5)]  # Crosses two epoch boundaries.
    resumed = input_pipeline.train_batches(data, batch_size=16, seed=0, start_step=3,
                                           sharding=sharding)
    for expected in batches[3:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    assert batches[0]["image"].sharding == sharding
    indices = input_pipeline.batch_indices(40, batch_size=16, seed=0, step=4)
    np.testing.assert_array_equal(batches[4]["label"], data.train_labels[indices])


def test_eval_batches_cover_the_split_once_with_a_mask():
    images = np.arange(20 * 2 * 2 * 3, dtype=np.uint8).reshape(20, 2, 2, 3)
    labels = np.arange(20, dtype=np.int32)
    sharding = NamedSharding(_mesh(), PartitionSpec("data"))
    batches = input_pipeline.eval_batches(images, labels, batch_size=8, sharding=sharding)
    assert [b["image"].shape[0] for b in batches] == [8, 8, 8]
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    got = np.concatenate([np.asarray(b["label"]) for b in batches])[mask > 0]
    np.testing.assert_array_equal(got, labels)
    assert mask.sum() == 20


# --- on device -----------------------------------------------------------------------------


def test_normalize_scales_and_standardizes():
    x = jnp.full((1, 1, 1, 3), 255, jnp.uint8)
    out = input_pipeline.normalize(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0),
                                   dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32).ravel(), [2.0, 1.0, 0.5])


def test_augment_without_shift_or_flip_is_the_identity():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)), jnp.uint8)
    out = input_pipeline.augment(x, jax.random.PRNGKey(0), max_shift=0, flip=False)
    np.testing.assert_array_equal(out, np.asarray(x, np.float32))


@pytest.mark.parametrize("max_shift", [1, 3])
def test_augment_shifts_each_image_by_at_most_max_shift(max_shift):
    x = np.zeros((16, 12, 12, 1), np.float32)
    x[:, 6, 5, 0] = 1.0  # One bright pixel, far enough from the border to stay inside.
    out = np.asarray(input_pipeline.augment(jnp.asarray(x), jax.random.PRNGKey(1),
                                            max_shift=max_shift, flip=False))
    np.testing.assert_array_equal(out.sum(axis=(1, 2, 3)), np.ones(16))  # Exact 0/1 moves.
    positions = np.argwhere(out[..., 0] == 1.0)
    assert np.all(np.abs(positions[:, 1] - 6) <= max_shift)
    assert np.all(np.abs(positions[:, 2] - 5) <= max_shift)
    assert len({(r, c) for _, r, c in positions}) > 1  # Not all the same shift.


def test_augment_flip_mirrors_some_images():
    x = np.zeros((32, 4, 4, 1), np.float32)
    x[:, :, 0, 0] = 1.0  # Left column lit.
    out = np.asarray(input_pipeline.augment(jnp.asarray(x), jax.random.PRNGKey(2),
                                            max_shift=0, flip=True))
    flipped = out[:, :, 3, 0].sum(axis=1) == 4
    kept = out[:, :, 0, 0].sum(axis=1) == 4
    assert np.all(flipped ^ kept) and flipped.any() and kept.any()
