"""Huge pages for XLA:CPU's buffers: a training step without a page fault per 4 KiB.

XLA:CPU allocates an executable's temporary buffer (640 MiB for a small-input
MobileNetV2 training step at batch 32) with ``malloc`` on every run. glibc
maps blocks that large fresh from the kernel and unmaps them on ``free``, so
every step touches new pages and takes one page fault per 4 KiB page: 168,000
faults per step there, and the step took 420 ms instead of 270 ms on a 2-core
CPU (``benchmarks/train_step.py`` prints both ways; PyTorch pays the same
kind of cost for its large tensors). Linux's transparent huge pages (2 MiB)
cut the faults 512-fold, but most distributions give them only to memory that
asks for them (``/sys/kernel/mm/transparent_hugepage/enabled`` is
``[madvise]``), and glibc asks only when the process starts with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35 and later).

:func:`reexec_with_huge_pages` restarts the running script with that setting
(``os.execve``: the same process id, arguments and standard streams), before
it has done any work, and says so in one line on stderr (:data:`NOTE`). It does
nothing where it cannot help or is not wanted:
not Linux/glibc >= 2.35, huge pages ``never`` (or ``always``: nothing to ask
for), the tunable already set, or ``JRELU6_HUGE_PAGES=0`` in the environment.
The numbers computed are the same either way; only the page size differs.

This module imports nothing heavy: the restart happens before JAX is loaded.

Example:
  >>> from mobilenet.infra import host_memory
  >>> isinstance(host_memory.status(), str)
  True
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
ENV_SWITCH = "JRELU6_HUGE_PAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)
NOTE = (f"note: restarting with GLIBC_TUNABLES={TUNABLE}, so that XLA's large buffers get "
        f"huge pages (faster steps on CPU; {ENV_SWITCH}=0 turns this off)")
"""The line printed on stderr before the restart."""


def _glibc_version() -> tuple[int, ...] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def _thp_mode() -> str | None:
    try:
        with open(THP_MODE) as file:
            text = file.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _reason_not_to() -> str | None:
    """Why a restart would not help (``None``: it would)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"off ({ENV_SWITCH}=0)"
    if TUNABLE.split("=")[0] in os.environ.get("GLIBC_TUNABLES", ""):
        return "on (GLIBC_TUNABLES)"
    if not sys.platform.startswith("linux"):
        return "not used (not Linux)"
    version = _glibc_version()
    if version is None or version < MIN_GLIBC:
        return "not used (needs glibc >= 2.35)"
    mode = _thp_mode()
    if mode != "madvise":
        return f"not used (transparent huge pages: {mode or 'unknown'})"
    return None


def status() -> str:
    """One phrase for a run's header: whether large allocations get huge pages, and why."""
    reason = _reason_not_to()
    return "available, not on (restart with reexec_with_huge_pages)" if reason is None else reason


def reexec_with_huge_pages() -> None:
    """Restarts this script with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` where that helps.

    Returns normally (having done nothing) when it would not help; otherwise it
    prints :data:`NOTE` on stderr and does not return: the process continues as
    the same command line, started again with the setting. Call it first thing
    in a script's ``__main__`` block (never from a library or a test process).
    """
    if _reason_not_to() is not None:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNABLE]))
    print(NOTE, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
