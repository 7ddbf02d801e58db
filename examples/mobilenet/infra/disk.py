"""Writes that either complete or leave the previous file as it was, and one error for a failure.

A full disk (or a quota, a read-only remount, an I/O error) shows up as an
``OSError`` from Python's file calls and as a ``ValueError`` whose message
carries the OS error from orbax and tensorstore. :func:`failure` turns either
into :class:`WriteFailed`, whose message is one line naming the cause and the
path; :func:`append_line` and :func:`replace_file` undo their own partial
writes, so a failed write leaves the file as it was.
"""

from __future__ import annotations

import errno
import os
import re

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
# tensorstore's messages end with "[os_error_code='28']"; orbax re-raises them as ValueError.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class WriteFailed(Exception):
    """A write to the work directory failed.

    Attributes:
      path: The file or directory being written.
      reason: The cause in words ("no space left on device").
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{reason} while writing {path}")
        self.path, self.reason = path, reason


def failure(error: BaseException, path: str) -> WriteFailed | None:
    """``error`` as a :class:`WriteFailed` for ``path``, or ``None`` if it is not an OS error.

    Follows ``__cause__``/``__context__``, so an ``OSError`` wrapped by a library counts.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, WriteFailed):
            return current
        if isinstance(current, OSError) and current.errno is not None:
            return WriteFailed(path, _REASONS.get(current.errno, current.strerror or str(current)))
        match = _OS_ERROR_CODE.search(str(current))
        if match:
            code = int(match.group(1))
            return WriteFailed(path, _REASONS.get(code, os.strerror(code).lower()))
        current = current.__cause__ or current.__context__
    return None


def append_line(path: str, line: str) -> None:
    """Appends ``line`` and a newline to ``path``; on failure the file is cut back to its old size.

    Raises:
      WriteFailed: the write failed (the file is as it was).
    """
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as error:
        raise _as_failure(error, path) from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as error:
            os.ftruncate(fd, size)  # Shrinking needs no space.
            raise _as_failure(error, path) from None
    finally:
        os.close(fd)


def replace_file(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename).

    Raises:
      WriteFailed: the write failed; ``path`` is as it was and the temporary file is removed.
    """
    temporary = path + ".tmp"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise _as_failure(error, path) from None


def _as_failure(error: OSError, path: str) -> WriteFailed:
    return failure(error, path) or WriteFailed(path, str(error))
