"""Native CPU kernels for the example, built on first use and called through XLA's FFI.

XLA:CPU has no fast depthwise convolution (see :mod:`mobilenet.depthwise`).
``depthwise.cc`` holds three small C++ kernels (forward, input gradient,
kernel gradient) for NHWC float32 and bfloat16 arrays (bfloat16 read and
written as it is, every sum in float32; a bfloat16 layer's output and its
gradient may be float32), and ``pointwise.cc`` one for the kernel gradient
of a bfloat16 1x1 convolution (a product summed over its operands' first
axis, which XLA:CPU computes on float32 copies). XLA calls them as custom
calls (:func:`jax.ffi.ffi_call`), running on XLA's own intra-op thread pool.

They are compiled the first time they are needed, with the machine's C++
compiler (``$CXX``, else ``c++`` or ``g++``) against the FFI headers that
jaxlib ships (:func:`jax.ffi.include_dir`), into a per-user cache folder
(``$XDG_CACHE_HOME/jrelu6/native``, one sub-folder per source, compiler,
flags and jaxlib version), and loaded from there afterwards. A concurrent
build by another process is harmless (each writes a private file and
renames it into place).

Nothing here is required: when there is no compiler, the build fails, or
``JRELU6_NATIVE=0`` is set, :func:`available` returns ``False`` after one
``RuntimeWarning`` saying why, and :mod:`mobilenet.depthwise` uses its
XLA form instead (same results up to float rounding, slower on CPU).

Example:
  >>> from mobilenet import native
  >>> native.available() in (True, False)
  True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence

import jax
import jaxlib

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(_HERE, name) for name in ("depthwise.cc", "pointwise.cc"))
HEADERS = (os.path.join(_HERE, "parallel.h"),)  # Included by the sources: in the cache key.
# -march=native: the kernels' inner loops are over channels, vectorised for this CPU;
# the cache folder is per machine, so the build never runs on another CPU model.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC")  # Each source's, then "-shared".
TARGETS = {
    "jrelu6_depthwise_forward": "Jrelu6DepthwiseForward",
    "jrelu6_depthwise_input_grad": "Jrelu6DepthwiseInputGrad",
    "jrelu6_depthwise_kernel_grad": "Jrelu6DepthwiseKernelGrad",
    "jrelu6_pointwise_kernel_grad": "Jrelu6PointwiseKernelGrad",
}
ENV_SWITCH = "JRELU6_NATIVE"
BUILD_TIMEOUT_S = 300

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "reason": str, "library": CDLL


def cache_directory() -> str:
    """``$XDG_CACHE_HOME/jrelu6/native`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jrelu6", "native")


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def cpu_signature() -> str:
    """The CPU's model and feature flags (``-march=native`` code runs only where they match:
    a cache folder shared by several machines keeps one build per kind of CPU; XLA:CPU's
    programs, compiled for the CPU they run on, likewise)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build(compiler: str) -> tuple[str, bool]:
    """Compiles :data:`SOURCES` into one library (once per source and header, compiler,
    flags and jaxlib).

    Returns:
      The library's path, and whether this call compiled it (``False``: cached).
    """
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False, timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        with open(name, "rb") as source:
            key.update(source.read())
    for part in (*version, *FLAGS, jax.__version__, jaxlib.__version__, platform.machine(),
                 cpu_signature()):
        key.update(part.encode())
    folder = os.path.join(cache_directory(), key.hexdigest()[:16])
    library = os.path.join(folder, "kernels.so")
    if os.path.exists(library):
        return library, False
    os.makedirs(folder, exist_ok=True)
    compile_library(SOURCES, library, compiler=compiler)
    return library, True


def compile_library(sources: Sequence[str], library: str, *, compiler: str | None = None
                    ) -> None:
    """Compiles ``sources`` (C++ files, each with its headers beside it) side by side with
    :data:`FLAGS` against jaxlib's FFI headers and links them into the shared library
    ``library``, put in place only when complete. ``compiler``: ``None`` for the one
    :func:`available` would use. Raises ``RuntimeError`` (the compiler's first error
    line) or ``OSError``.

    ``benchmarks/native_ab.py`` builds another revision's kernels with it too.
    """
    compiler = compiler or _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    scratch = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(library)), prefix=".build-")
    try:
        objects = [os.path.join(scratch, f"{index}.o") for index in range(len(sources))]
        include = f"-I{jax.ffi.include_dir()}"
        _run_side_by_side([[compiler, *FLAGS, include, "-c", name, "-o", obj]
                           for name, obj in zip(sources, objects)], compiler, scratch)
        partial = os.path.join(scratch, "library.so")
        _run_side_by_side([[compiler, "-shared", *objects, "-o", partial]], compiler, scratch)
        os.replace(partial, library)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_side_by_side(commands: list[list[str]], compiler: str, scratch: str) -> None:
    """Runs ``commands`` at once (one source each: a machine's cores build them side by
    side), each within :data:`BUILD_TIMEOUT_S`; a ``RuntimeError`` with the first error
    line of the first that fails."""
    logs = [os.path.join(scratch, f"{index}.log") for index in range(len(commands))]
    processes = []
    try:
        for command, log in zip(commands, logs):
            with open(log, "w") as stderr:
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                  stderr=stderr))
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        for process, log in zip(processes, logs):
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{compiler} took over {BUILD_TIMEOUT_S} s") from None
            if code != 0:
                with open(log) as stderr:
                    lines = stderr.read().strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error:" in line), lines[-1])
                raise RuntimeError(f"{compiler} failed (exit {code}): {first.strip()}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _load() -> None:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        _state.update(ok=False, reason=f"{ENV_SWITCH}=0", quiet=True)
        return
    compiler = _compiler()
    if compiler is None:
        _state.update(ok=False, reason="no C++ compiler found ($CXX, c++, g++, clang++)")
        return
    try:
        start = time.perf_counter()
        path, built = _build(compiler)
        seconds = time.perf_counter() - start if built else 0.0
        library = ctypes.CDLL(path)
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                        platform="cpu")
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
        _state.update(ok=False, reason=f"building the kernels failed: {error}")
        return
    _state.update(ok=True, reason="", library=library, path=path, build_seconds=seconds)


def available() -> bool:
    """Whether the native kernels are built, loaded and registered with XLA (CPU).

    The first call builds (or finds) and loads them; when that is not possible
    it warns once, saying why, and returns ``False`` from then on.
    """
    with _lock:
        if not _state:
            _load()
            if not _state["ok"] and not _state.get("quiet"):
                warnings.warn(f"mobilenet.native: {_state['reason']}; the depthwise "
                              "convolutions use their XLA form (slower on CPU)",
                              RuntimeWarning, stacklevel=2)
        return bool(_state["ok"])


def has_pointwise_kernel_grad() -> bool:
    """Whether the library has the bfloat16 1x1 kernel gradient (``pointwise.cc``): built
    and loaded (:func:`available`) for a CPU with AVX512-BF16, the only kind on which it
    is faster than XLA's own float32 dot."""
    if not available():
        return False
    return bool(_state["library"].Jrelu6PointwiseKernelGradBuilt())  # type: ignore[attr-defined]


def build_seconds() -> float:
    """Seconds this process spent compiling the kernels (0 when they came from the cache,
    were never needed, or could not be built)."""
    return float(_state.get("build_seconds", 0.0))  # type: ignore[arg-type]


def library_path() -> str:
    """The loaded kernels' library, whose folder names a hash of their source, compiler,
    flags and CPU (:func:`available` first); else why there is none."""
    return str(_state["path"]) if available() else f"unavailable: {_state['reason']}"


def unavailable_reason() -> str:
    """Why :func:`available` is ``False`` (empty when it is ``True``)."""
    available()
    return str(_state["reason"])
