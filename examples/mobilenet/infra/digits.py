"""scikit-learn's bundled digits and their fixed split, cached as a small ``.npz``.

Importing ``sklearn.datasets`` and ``sklearn.model_selection`` takes about 3 s
(most of a warm run's data loading), for 115 KB of 8x8 images and a split that
never changes. :func:`load` does it once per scikit-learn version and keeps the
result in ``$XDG_CACHE_HOME/jrelu6/data`` (``~/.cache`` when unset); later calls
read that file in milliseconds without importing scikit-learn. A missing,
damaged or unreadable file is rebuilt; an unwritable folder only costs the
import again.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import zipfile

import numpy as np

_KEYS = ("x_train", "y_train", "x_test", "y_test")
FORMAT = 1  # Bump when the cached arrays change meaning.


def cache_path() -> str:
    """The cache file of the installed scikit-learn (which owns the images and the split).

    Raises:
      ImportError: scikit-learn is not installed.
    """
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError("the digits data set needs scikit-learn "
                          "(pip install scikit-learn)") from None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jrelu6", "data", f"digits-sklearn{version}-v{FORMAT}.npz")


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8x8 digits (uint8, 0-255) split 80/20, stratified, ``random_state=0``.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: 1,437 and 360 images of 8x8, int64 labels.
    """
    path = cache_path()
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as saved:
            return tuple(saved[key] for key in _KEYS)  # type: ignore[return-value]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # Missing or damaged: build it again.
    arrays = _split()
    _save(path, dict(zip(_KEYS, arrays, strict=True)))
    return arrays


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # Bundled: nothing downloaded.
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    return x_train, y_train, x_test, y_test


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` to ``path`` atomically (a private file renamed into place)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz.tmp")
    except OSError:
        return  # A read-only cache folder: the next run builds the split again.
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, path)
    except OSError:
        if os.path.exists(partial):
            os.remove(partial)
