"""The README's two commands and CI agree."""

import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_command(after: str) -> str:
    """The first bash block after the README line starting with ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    block = re.search(r"```bash\n(.*?)\n```", text[start:], re.S)
    assert block, f"no bash block after {after!r} in README.md"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    command = _readme_command("Run the tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assignment = re.search(r"^readme_test_command=(.*)$", ci, re.M)
    assert assignment, ".ci/run defines no readme_test_command"
    assert shlex.split(assignment.group(1)) == [command]


def test_ci_runs_in_a_fresh_virtual_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^python3 -m venv ", ci, re.M)
    assert re.search(r'^source "\$work/venv/bin/activate"', ci, re.M)
    assert ci.index("activate") < ci.index('eval "$readme_test_command"')
