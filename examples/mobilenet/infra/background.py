"""Calls in daemon threads whose wait can be interrupted, and an orderly end for them.

The example compiles its train and eval steps in threads while the main thread
initializes the state (XLA compiles on one core).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class Background:
    """``function(*args, **kwargs)`` in a daemon thread; :meth:`result` waits for it.

    The wait can be interrupted (Ctrl-C), unlike a long call in the main thread,
    and a daemon thread does not hold up the exit.
    """

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = function(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - raised again in result().
                self._error = error

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        """The function's result (or its exception, raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    @staticmethod
    def settle(tasks: list[Background], *, interrupted: bool) -> None:
        """Waits for ``tasks`` to end.

        A thread still in XLA's compiler when the interpreter shuts down would
        abort the process when it returns, so even after Ctrl-C the compile
        threads are waited for. That wait is announced in one line; during it
        Ctrl-C has its default effect again (the process ends at once).
        """
        running = [task._thread for task in tasks if task._thread.is_alive()]
        if not running:
            return
        restore = None
        if interrupted and threading.current_thread() is threading.main_thread():
            print("waiting for XLA's compiler to return before exiting (Ctrl-C again: "
                  "exit at once)", file=sys.stderr, flush=True)
            restore = signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            for thread in running:
                thread.join()
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
