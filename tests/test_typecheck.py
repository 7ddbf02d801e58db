"""Users' type checkers see the modules' fields: tools/typecheck.sh passes.

It runs basedpyright and mypy on the package and tests/typecheck/user_code.py
(no error) and on tests/typecheck/bad_keywords.py (an error on each marked
line). Both checkers are optional: without them the test is skipped.
"""

from __future__ import annotations

import pathlib
import runpy
import shutil
import subprocess

import pytest

import jrelu6.linen
import jrelu6.nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_type_checkers_accept_correct_code_and_catch_misspelled_keywords():
    missing = [tool for tool in ("basedpyright", "mypy") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (pip install basedpyright mypy)")
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "typecheck.sh")], capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    marked = (ROOT / "tests" / "typecheck" / "bad_keywords.py").read_text().count("# error\n")
    assert marked >= 10
    assert result.stdout.count(f"an error on each of the {marked} marked lines, none") == 2


def test_the_users_file_runs():
    # What the checkers accept also runs: every class built, applied and subclassed.
    names = runpy.run_path(str(ROOT / "tests" / "typecheck" / "user_code.py"))
    assert names["y"].shape == (2, 3) and names["z"].shape == (2, 4)
    for framework in ("linen", "nnx"):
        public = set(getattr(jrelu6, framework).__all__)
        assert {type(m).__name__ for m in names[f"{framework}_modules"]} == public
