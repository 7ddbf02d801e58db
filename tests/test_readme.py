"""The README, the documentation pages and CI agree with each other and with the code.

The pages' ``>>>`` examples run as doctests (``--doctest-glob=*.md`` in pyproject.toml);
these tests check what a doctest cannot: the commands, the links and the API reference.
"""

import importlib
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Markdown links and images: [text](target) and ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _readme_command(after: str) -> str:
    """The first bash block after the README line starting with ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    block = re.search(r"```bash\n(.*?)\n```", text[start:], re.S)
    assert block, f"no bash block after {after!r} in README.md"
    return block.group(1).strip()


def _pages() -> list[pathlib.Path]:
    return sorted(DOCS.glob("*.md"))


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


def test_the_readme_train_command_runs_the_example_with_its_extra():
    command = _readme_command("Train the MobileNet example")
    install, run = command.split(" && ")
    assert install == 'python -m pip install -e ".[examples]"'
    assert run == "python examples/train.py"
    assert (ROOT / "examples" / "train.py").is_file()


def test_every_extra_the_docs_install_exists():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python's library from 3.11")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["project"]["optional-dependencies"])
    for path in [ROOT / "README.md", *_pages()]:
        for group in re.findall(r'pip install -e "\.\[([^\]]+)\]"', path.read_text()):
            for extra in group.split(","):
                assert extra in extras, f"{path.name} installs the unknown extra {extra!r}"


def test_the_readme_renders_on_pypi():
    """PyPI shows the README as the package's description: no relative links there."""
    for target in LINK.findall((ROOT / "README.md").read_text()):
        assert re.match(r"https?://", target), f"README.md links to {target!r}, not absolute"


def test_the_pages_link_to_files_that_exist():
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            assert (DOCS / path).is_file(), f"docs/{page.name} links to a missing {path!r}"


def test_every_page_is_in_the_table_of_contents():
    index = (DOCS / "index.md").read_text()
    listed = set()
    for tree in re.findall(r"```\{toctree\}\n(.*?)```", index, re.S):
        listed.update(line.strip() for line in tree.splitlines()
                      if line.strip() and not line.startswith(":"))
    pages = {page.stem for page in _pages()} - {"index"}
    assert pages <= listed, f"pages in no toctree of docs/index.md: {sorted(pages - listed)}"


@pytest.mark.parametrize("module", ["jrelu6", "jrelu6.linen", "jrelu6.nnx"])
def test_the_api_reference_documents_every_public_name(module):
    api = (DOCS / "api.md").read_text()
    documented = set()
    current = None
    for line in api.splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            current = match.group(1)
        elif match := re.match(r"\.\. (?:auto|py:)?(?:function|class)::\s*(\w+)", line):
            documented.add(f"{current}.{match.group(1)}")
    public = {f"{module}.{name}" for name in importlib.import_module(module).__all__}
    assert public <= documented, f"not in docs/api.md: {sorted(public - documented)}"
