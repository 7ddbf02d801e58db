"""JAX's persistent compilation cache for the example: compile each configuration once.

XLA:CPU spends most of a short run's start-up compiling the training step
(seconds to tens of seconds for a MobileNet). JAX can keep compiled
executables on disk, keyed by the program, the compile options, the devices
and the JAX/XLA versions, and load them instead of compiling when the same
program comes again: a second run of the same configuration then skips
compiling. :func:`enable` turns that on in a per-user folder and lowers JAX's
thresholds (by default only programs that took over a second to compile are
written) so that every executable of a run is kept, the fast-compiled
initialisation too. Steps compiled in several threads at once read and write
the cache independently (it is a folder of files, one per program).

:class:`CompileStats` counts, from JAX's monitoring events, the seconds spent
in the backend compiler (or loading from the cache) and the cache hits and
misses while its ``with`` block runs, for a run to print. Its listeners are
registered when the block starts and removed when it ends (JAX has no way to
listen to one thread or one function only, so they count the whole process).

Example:
  >>> import os, tempfile
  >>> folder = enable(os.path.join(tempfile.mkdtemp(), "cache"))
  >>> os.path.isdir(folder)
  True
  >>> disable()
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from typing import TYPE_CHECKING

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_MISS_EVENT = "/jax/compilation_cache/cache_misses"
_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"

class CompileStats:
    """Counts compiles and persistent-cache use while its ``with`` block runs.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> with CompileStats() as stats:
      ...     _ = jax.jit(lambda x: x * 3.5 + 1).lower(jnp.ones(3)).compile()
      >>> stats.counts()["compiles"] >= 1
      True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # Steps compile in several threads at once.
        self._stats = {"compile_seconds": 0.0, "compiles": 0, "cache_hits": 0,
                       "cache_requests": 0}

    def __enter__(self) -> Self:
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc_info: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)

    def _on_duration(self, event: str, seconds: float, **_: object) -> None:
        if event == _COMPILE_EVENT:
            with self._lock:
                self._stats["compile_seconds"] += seconds
                self._stats["compiles"] += 1

    def _on_event(self, event: str, **_: object) -> None:
        key = {_HIT_EVENT: "cache_hits", _REQUEST_EVENT: "cache_requests"}.get(event)
        if key is not None:
            with self._lock:
                self._stats[key] += 1

    def counts(self) -> dict[str, float | int]:
        """So far: seconds in the backend compiler (cache loads included), compiles,
        persistent-cache requests and hits."""
        with self._lock:
            return dict(self._stats)

if TYPE_CHECKING:
    from typing_extensions import Self


def default_directory() -> str:
    """The per-user cache folder: ``$XDG_CACHE_HOME/jrelu6/jax-compilation-cache``.

    ``$XDG_CACHE_HOME`` defaults to ``~/.cache``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jrelu6", "jax-compilation-cache")


def enable(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory``.

    Every executable compiled afterwards is written there (no minimum
    compile time or size) and loaded from there when the same program is
    compiled again, in this process or a later one.

    Args:
      directory: the cache folder, created if missing; ``None``:
        :func:`default_directory`.

    Returns:
      The folder's absolute path, or ``None`` when it cannot be created or
      written (then a ``RuntimeWarning`` says why and compiling goes on
      without the cache).
    """
    path = os.path.abspath(os.path.expanduser(directory or default_directory()))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        warnings.warn(f"compile_cache.enable: cannot write to {path} "
                      f"({error.strerror or error}); compiling without the persistent cache",
                      RuntimeWarning, stacklevel=2)
        return None
    if jax.config.jax_compilation_cache_dir not in (None, path):
        _jax_cache.reset_cache()  # Another folder was in use: let JAX open this one.
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def disable() -> None:
    """Turns the persistent cache off again (compiled programs stay in memory)."""
    if jax.config.jax_compilation_cache_dir is not None:
        _jax_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", None)
