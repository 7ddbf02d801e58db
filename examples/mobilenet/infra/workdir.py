"""The work directory: its layout and the checks made before a run reads or writes anything.

Layout: ``config.json`` (the settings of the last run), ``checkpoints/``
(orbax steps), ``checkpoints-damaged/`` (damaged steps moved aside),
``metrics.jsonl``, ``metrics.png`` and ``run.lock``.

One run at a time: :meth:`Workdir.lock` takes an exclusive ``fcntl.flock`` on
``run.lock`` for as long as the run uses the directory. The kernel releases it
when the process ends, however it ends (``kill -9`` included), so a lock is
never stale; the file stays, holding the last holder's process id and start
time for the message a second process prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

from mobilenet.infra import disk

try:
    import fcntl
except ImportError:  # Not POSIX: no locking.
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
CHECKPOINT_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "checkpoints-damaged"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


class WorkdirError(ValueError):
    """A work directory that cannot be used (one-line message)."""


class WorkdirBusy(WorkdirError):
    """Another process holds the work directory's lock (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The paths of a work directory.

    Attributes:
      path: The directory (absolute).
    """

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.path.abspath(self.path))

    @property
    def checkpoints(self) -> str:
        """``checkpoints/``: the orbax steps."""
        return os.path.join(self.path, CHECKPOINT_SUBDIR)

    @property
    def damaged(self) -> str:
        """``checkpoints-damaged/``: damaged steps, moved aside."""
        return os.path.join(self.path, DAMAGED_SUBDIR)

    @property
    def metrics(self) -> str:
        """``metrics.jsonl``."""
        return os.path.join(self.path, METRICS_FILE)

    @property
    def plot(self) -> str:
        """``metrics.png``."""
        return os.path.join(self.path, PLOT_FILE)

    @property
    def lock_file(self) -> str:
        """``run.lock``: locked while a run uses the directory."""
        return os.path.join(self.path, LOCK_FILE)

    @property
    def config(self) -> str:
        """``config.json``: the settings of the last run."""
        return os.path.join(self.path, CONFIG_FILE)

    def check(self) -> None:
        """Checks that the run can write here and that what is here is consistent.

        Creates nothing: a missing directory is checked through its nearest
        existing parent.

        Raises:
          WorkdirError: the path or a parent is a file; it cannot be written;
            or ``metrics.jsonl`` exists without ``checkpoints/`` (a run that
            restarted from step 0 would overwrite its metrics).
        """
        existing = self.path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise WorkdirError(f"work directory {self.path}: {existing} is a file, not a "
                               "directory")
        try:  # Writes and removes a temporary file: catches read-only mounts too.
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise WorkdirError(f"work directory {self.path}: cannot write in {existing} "
                               f"({error.strerror or error})") from None
        if existing != self.path:
            return
        for name in (CHECKPOINT_SUBDIR, DAMAGED_SUBDIR):
            if os.path.exists(os.path.join(self.path, name)) and not os.path.isdir(
                    os.path.join(self.path, name)):
                raise WorkdirError(f"work directory {self.path}: {name} is a file, not a "
                                   "directory")
        if os.path.exists(self.metrics) and not os.path.isdir(self.checkpoints):
            raise WorkdirError(
                f"work directory {self.path} has {METRICS_FILE} but no {CHECKPOINT_SUBDIR}/ "
                "(deleted?): a run would start again from step 0 and overwrite the metrics; "
                f"move {METRICS_FILE} away to start again, or use a new --workdir")

    def saved_config(self) -> dict[str, Any] | None:
        """The settings of the run that wrote this directory (``None`` when there are none).

        Raises:
          WorkdirError: ``config.json`` is not a JSON object.
        """
        if not os.path.exists(self.config):
            return None
        try:
            with open(self.config) as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise TypeError("not an object")
        except (OSError, ValueError, TypeError) as error:
            raise WorkdirError(f"{self.config} cannot be read ({error}); repair it, or use a "
                               "new --workdir") from None
        return saved

    def write_config(self, settings: dict[str, Any]) -> None:
        """Writes ``config.json`` atomically (write, then rename).

        Raises:
          disk.WriteFailed: the write failed (a full disk); the old file is kept.
        """
        os.makedirs(self.path, exist_ok=True)
        disk.replace_file(self.config, json.dumps(settings, indent=2))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the directory's lock (creating the directory) until the block ends.

        Raises:
          WorkdirBusy: another process holds it; the message names its process id,
            host and start time.
          disk.WriteFailed: the lock file cannot be written (a full disk).
        """
        if fcntl is None:
            yield
            return
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise disk.failure(error, self.lock_file) or error from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WorkdirBusy(f"work directory {self.path} is in use by "
                                  f"{_holder(fd)}; wait for it to end, or use another "
                                  "--workdir") from None
            since = datetime.datetime.now(datetime.timezone.utc)
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": since.strftime("%Y-%m-%d %H:%M:%S UTC")})
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, record.encode() + b"\n", 0)
            except OSError as error:
                raise disk.failure(error, self.lock_file) or error from None
            yield
        finally:
            os.close(fd)  # Releases the lock.


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote in the lock file."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"process {holder['pid']} on {holder['host']} since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # Taken, not yet written.
        return "another process"
