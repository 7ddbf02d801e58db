"""Compiled programs kept between runs, found without tracing: :class:`ProgramCache`.

JAX's persistent compilation cache (:mod:`mobilenet.infra.compile_cache`) keys a
program by its lowered form, so a warm run still traces and lowers every step only
to look it up: on a 2-core CPU that is most of the default run's fixed cost
(``docs/speed_notes.md``). This cache keys a run's programs by everything that
decides them, computed before any tracing (:func:`fingerprint`):

- the source of every module of the packages named (jrelu6 and this example);
- the versions of Python, jax, jaxlib, flax, optax, numpy and ml_dtypes;
- JAX's configuration, the ``XLA_FLAGS`` and ``JAX_*`` environment, the devices
  and the CPU's model and feature flags;
- what the caller adds: the run's settings (those that act only on the host
  aside: :data:`HOST_ONLY`), the data's shape and statistics, the model, the
  native kernels' library.

A hit loads the executables (:mod:`jax.experimental.serialize_executable`), the
state's shapes and the initial state itself (:meth:`ProgramCache.result`, for the
seed that made it); a file that cannot be read or loaded is a miss. A miss traces and
compiles as before, but past JAX's persistent cache (an executable loaded from it
cannot be saved again: XLA:CPU drops its functions), and saves the result: the
first run of a setting pays a full compilation once. A program that cannot be saved
(one holding Python callbacks) is marked so, and later runs compile it through JAX's
persistent cache as usual. Objects the programs' trees
hold but that cannot be saved (the flax module and the optax transformation,
static fields of the train state) are given to the cache alive and stand in for
themselves.

The training command turns it on (:func:`enable`) with JAX's persistent cache, in
that cache's folder; ``JRELU6_PROGRAM_CACHE=0`` or ``--no-compilation-cache``
keeps it off, as does more than one process. The newest :data:`KEEP` entries are kept.
Its files are code, trusted as JAX's own cache is: they live in the user's cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

import jrelu6
from mobilenet import native

ENV_SWITCH = "JRELU6_PROGRAM_CACHE"
KEEP = 8  # Entries (one per distinct run setting) kept; older ones are removed.
RESULT_LIMIT = 64 * 2**20  # Bytes: a larger result (a large model's state) is not kept.
VERSIONS = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes")
SOURCE_SUFFIXES = (".py", ".cc", ".h")
FOLDER = "jrelu6-programs"  # Inside JAX's persistent cache folder.
# Settings that act only on the host (data order, logging, saving): not in the key, so
# that e.g. another seed finds the same programs (its keys are the programs' arguments).
HOST_ONLY = ("seed", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
             "progress", "plot", "allow_schedule_change", "init_from", "data_dir")

# The code the steps are traced from: jrelu6 and this example.
SOURCES = (os.path.dirname(os.path.abspath(jrelu6.__file__)),
           os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_enabled = False
_window = threading.Lock()
_window_users: list[bool] = []  # The persistent cache's setting, while compiles bypass it.

T = TypeVar("T")


def fingerprint(*parts: object, sources: Iterable[str]) -> str:
    """A hex key of ``parts`` (by ``repr``) and of everything else that decides a program.

    Args:
      *parts: The caller's inputs to its programs (settings, shapes, statistics);
        their ``repr`` must say all that matters about them.
      sources: Folders whose source files (``.py``, ``.cc``, ``.h``, recursively) the
        programs are traced from.
    """
    key = hashlib.sha256()

    def add(*items: object) -> None:
        for item in items:
            key.update(repr(item).encode())
            key.update(b"\0")

    for root in sources:
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(SOURCE_SUFFIXES):
                    path = os.path.join(folder, name)
                    with open(path, "rb") as file:
                        add(os.path.relpath(path, root), hashlib.sha256(file.read()).hexdigest())
    add(sys.version, *(importlib.metadata.version(name) for name in VERSIONS))
    add(sorted((name, repr(value)) for name, value in jax.config.values.items()))
    add(sorted((name, value) for name, value in os.environ.items()
               if name == "XLA_FLAGS" or name.startswith("JAX_")))
    add([(d.platform, d.device_kind, d.id, d.process_index) for d in jax.devices()],
        jax.devices()[0].client.platform_version, native.cpu_signature())
    add(*parts)
    return key.hexdigest()


class ProgramCache:
    """A run's compiled programs and state shapes, saved under one key.

    Attributes:
      folder: Where this key's files are.
      hits: Programs loaded from the cache so far.
      misses: Programs compiled (and saved, where they could be) so far.
      results: Results (:meth:`result`) loaded from the cache, without their program.
    """

    def __init__(self, directory: str, key: str, *, live: Mapping[str, object]):
        """Args:
          directory: The cache's folder (one subfolder per key).
          key: The :func:`fingerprint` of the run.
          live: Objects the saved trees hold that are not saved but given again on
            loading, by name (e.g. ``{"model": model, "tx": tx}``).
        """
        self.folder = os.path.join(directory, key[:32])
        self.hits = 0
        self.misses = 0
        self.results = 0
        self._live = dict(live)

    def shapes(self, name: str, build: Callable[[], T]) -> T:
        """``build()``'s pytree with :class:`jax.ShapeDtypeStruct` leaves (shardings
        dropped), loaded if saved, else built and saved."""
        loaded = self._read(name + ".shapes")
        if loaded is not None:
            return loaded
        tree = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), build())
        self._write(name + ".shapes", tree)
        return tree

    def compile(self, name: str, jitted: Any, *args: Any) -> jax.stages.Compiled:
        """``jitted.lower(*args).compile()``, or the same executable loaded if saved."""
        loaded = self._read(name + ".program")
        if loaded is not None:
            payload, in_tree, out_tree, device_ids = loaded
            try:
                devices = {device.id: device for device in jax.devices()}
                compiled = serialize_executable.deserialize_and_load(
                    payload, in_tree, out_tree,
                    execution_devices=[devices[index] for index in device_ids])
            except Exception:  # noqa: BLE001 - any failure to load is a miss.
                compiled = None
            if compiled is not None and _signature(compiled.args_info) == _signature((args, {})):
                self.hits += 1
                return compiled
        self.misses += 1
        lowered = jitted.lower(*args)
        unsaved = os.path.join(self.folder, name + ".unsaved")
        if os.path.exists(unsaved):  # Known not to save: JAX's persistent cache may serve it.
            return lowered.compile()
        with _past_the_persistent_cache():
            compiled = lowered.compile()
        try:
            saved = serialize_executable.serialize(compiled)
        except Exception:  # noqa: BLE001 - e.g. constants, or Python callbacks (the native
            self._write(name + ".unsaved", None)  # kernels' partitioning rule under several
            return compiled  # devices): not saved, and marked so.
        device_ids = [device.id for device in compiled.runtime_executable().local_devices()]
        self._write(name + ".program", (*saved, device_ids))
        return compiled

    def result(self, name: str, jitted: Any, *args: Any,
               sharding: jax.sharding.Sharding) -> Any:
        """``jitted(*args)`` placed with ``sharding``: its values loaded if saved for these
        arguments' values, else computed (the program from :meth:`compile`) and saved.

        For a deterministic function whose result is quicker to read than its program to
        load, such as the model's initialization (on a 2-core CPU the default run's
        init program takes about 0.75 s to load, its result under 0.1 s). One result
        is kept per name: other arguments' values replace it; one over
        :data:`RESULT_LIMIT` bytes is not kept.
        """
        digest = _digest(args)
        loaded = self._read(name + ".result")
        if loaded is not None and loaded[0] == digest:
            self.results += 1
            return jax.device_put(loaded[1], sharding)
        out = self.compile(name, jitted, *args)(*args)
        if sum(leaf.nbytes for leaf in jax.tree.leaves(out)) > RESULT_LIMIT:
            return out
        try:
            values = jax.device_get(out)
        except Exception:  # noqa: BLE001 - e.g. a typed key array: not saved.
            return out
        self._write(name + ".result", (digest, values))
        return out

    def _read(self, name: str) -> Any:
        """The object saved as ``name``, or ``None`` (missing or unreadable)."""
        path = os.path.join(self.folder, name)
        try:
            with open(path, "rb") as file:
                loaded = _Unpickler(file, self._live).load()
            os.utime(self.folder)  # Recently used: kept by _prune.
        except Exception:  # noqa: BLE001 - a damaged or stale file is a miss.
            return None
        return loaded

    def _write(self, name: str, value: object) -> None:
        """Saves ``value`` as ``name`` (atomically); a failure (full disk, an object that
        cannot be saved) leaves the cache without it."""
        try:
            buffer = io.BytesIO()
            _Pickler(buffer, self._live).dump(value)
            os.makedirs(self.folder, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=self.folder, prefix=".partial-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(buffer.getvalue())
                os.replace(partial, os.path.join(self.folder, name))
            except BaseException:
                os.unlink(partial)
                raise
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            return
        _prune(os.path.dirname(self.folder), keep=KEEP)


@contextlib.contextmanager
def _past_the_persistent_cache() -> Iterator[None]:
    """JAX's persistent cache off, for every thread, while any such block runs.

    An executable loaded from that cache cannot be saved again (XLA:CPU keeps none
    of its functions' code). JAX decides once per process whether to use the cache,
    so a thread-local switch would not do: the cache is reset and switched off, and
    reset and switched back on by the last block to end.
    """
    with _window:
        if not _window_users:
            _jax_cache.reset_cache()
            previous = jax.config.jax_enable_compilation_cache
            jax.config.update("jax_enable_compilation_cache", False)
        else:
            previous = _window_users[0]
        _window_users.append(previous)
    try:
        yield
    finally:
        with _window:
            _window_users.pop()
            if not _window_users:
                jax.config.update("jax_enable_compilation_cache", previous)
                _jax_cache.reset_cache()


def _digest(tree: Any) -> str:
    """A hash of the values (with dtypes and shapes) of ``tree``'s arrays."""
    hasher = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            hasher.update(str(leaf.dtype).encode())
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        hasher.update(f"{array.dtype}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def _signature(tree: Any) -> tuple[Any, ...]:
    """The structure, shapes and dtypes of a program's arguments."""
    leaves, structure = jax.tree.flatten(tree)
    return structure, [(tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves]


def enable(on: bool = True) -> None:
    """Lets :func:`open_cache` open caches (the training command does, with JAX's
    persistent cache); off by default, so library calls and studies trace as usual."""
    global _enabled
    _enabled = on


def open_cache(*parts: object, settings: object, live: Mapping[str, object],
               sources: Iterable[str] = SOURCES) -> ProgramCache | None:
    """The run's :class:`ProgramCache`, or ``None`` where it is off (see the module).

    Args:
      *parts: What else decides the programs (:func:`fingerprint`).
      settings: The run's settings (a dataclass); all but :data:`HOST_ONLY` are keyed.
      live: The objects the trees hold that stand in for themselves (:class:`ProgramCache`).
      sources: The folders of the code the programs are traced from.
    """
    directory = jax.config.jax_compilation_cache_dir
    if (not _enabled or not directory or os.environ.get(ENV_SWITCH, "1") == "0"
            or jax.process_count() > 1):
        return None
    keyed = sorted((name, repr(value)) for name, value in vars(settings).items()
                   if name not in HOST_ONLY)
    return ProgramCache(os.path.join(directory, FOLDER),
                        fingerprint(type(settings).__qualname__, keyed, *parts, sources=sources),
                        live=live)


def open_for_run(settings: object, dataset: Any, model: object, tx: object, *,
                 num_classes: int) -> ProgramCache | None:
    """:func:`open_cache` for a training run of ``model`` on ``dataset`` (a
    :class:`mobilenet.infra.datasets.Dataset`): keyed also by the data's name, shapes,
    statistics and size, the class count, the native kernels' library and the model's
    ``repr``; ``model`` and the optax ``tx`` stand in for themselves."""
    return open_cache(dataset.name, dataset.image_shape, dataset.mean, dataset.std,
                      num_classes, dataset.train_images.shape[0], dataset.flip,
                      native.library_path(), repr(model), settings=settings,
                      live={"model": model, "tx": tx})


def _prune(directory: str, *, keep: int) -> None:
    """Removes all but the ``keep`` most recently used entries of ``directory``."""
    try:
        entries = sorted((entry for entry in os.scandir(directory) if entry.is_dir()),
                         key=lambda entry: entry.stat().st_mtime, reverse=True)
        for entry in entries[keep:]:
            for file in os.scandir(entry.path):
                os.unlink(file.path)
            os.rmdir(entry.path)
    except OSError:
        pass  # Another process pruned it first, or it is read-only: nothing lost.


class _Pickler(pickle.Pickler):
    """Saves the ``live`` objects by name only."""

    def __init__(self, file: io.BytesIO, live: Mapping[str, object]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._names = {id(value): name for name, value in live.items()}

    def persistent_id(self, obj: object) -> str | None:
        return self._names.get(id(obj))


class _Unpickler(pickle.Unpickler):
    """Gives the ``live`` objects back for their names."""

    def __init__(self, file: Any, live: Mapping[str, object]):
        super().__init__(file)
        self._live = live

    def persistent_load(self, pid: str) -> object:
        if pid not in self._live:
            raise pickle.UnpicklingError(f"no live object {pid!r}")
        return self._live[pid]
