"""examples/mobilenet/infra/host_memory.py: the restart with huge pages for malloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mobilenet.infra import host_memory

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")

# Prints its pid, then restarts itself; the second image prints pid, tunables and argv.
SCRIPT = """
import os, sys
sys.path.insert(0, {examples!r})
from mobilenet.infra import host_memory
print("pid", os.getpid(), "tunables", os.environ.get("GLIBC_TUNABLES"), "argv", sys.argv[1:],
      flush=True)
host_memory.reexec_with_huge_pages()
print("done", flush=True)
"""


def _run(tmp_path, **env_changes: str) -> list[str]:
    """The probe's stdout lines; its stderr holds the announcement exactly when it restarted."""
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT.format(examples=EXAMPLES))
    env = {**os.environ, **env_changes}
    result = subprocess.run([sys.executable, str(script), "a b", "--c"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    lines = result.stdout.splitlines()
    restarted = len(lines) == 3
    assert result.stderr == (host_memory.NOTE + "\n" if restarted else "")
    return lines


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(host_memory.ENV_SWITCH, raising=False)


def test_restarts_once_with_the_tunable_where_it_helps(tmp_path):
    reason = host_memory._reason_not_to()
    lines = _run(tmp_path)
    if reason is not None:
        assert lines[-1] == "done" and len(lines) == 2  # No restart.
        pytest.skip(f"huge pages would not help here: {reason}")
    first, second, last = lines
    assert first.split()[1] == second.split()[1]  # The same process.
    assert "tunables None" in first and f"tunables {host_memory.TUNABLE}" in second
    assert second.endswith("argv ['a b', '--c']") and last == "done"


def test_switched_off_never_restarts(tmp_path):
    lines = _run(tmp_path, **{host_memory.ENV_SWITCH: "0"})
    assert len(lines) == 2 and lines[-1] == "done"


def test_existing_tunables_are_kept_and_not_repeated(tmp_path):
    lines = _run(tmp_path, GLIBC_TUNABLES=host_memory.TUNABLE)
    assert len(lines) == 2 and lines[-1] == "done"


@pytest.mark.parametrize("env,phrase", [({"JRELU6_HUGE_PAGES": "0"}, "off"),
                                        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "on")])
def test_status_says_why(monkeypatch, env, phrase):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert host_memory.status().startswith(phrase)
