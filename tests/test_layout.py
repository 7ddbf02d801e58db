"""The code's shape: no function over 60 lines outside tests/, no import cycle in the example,
and the recipe short enough to read.

All read the sources (``ast``, line counts); nothing is imported or run.
``python tests/test_layout.py`` prints the example's layout: lines per part and file.

The recipe's goal (issue 17) is ``RECIPE_BUDGET`` lines, enforced since the recipe met it
(``ENFORCE_RECIPE_BUDGET``); ``RECIPE_CEILING`` (what the recipe measures now, rounded up)
is enforced too: the recipe may shrink, not grow. Lower the ceiling as it shrinks.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
# The source trees the rule covers (tests/ is exempt: a test's table may be long).
CHECKED = ("jrelu6", "examples", "benchmarks", ".ci", "docs")
# Functions exempt from the rule ("path:name"): none.
NOT_YET_SPLIT: set[str] = set()
EXAMPLE_PACKAGE = ROOT / "examples" / "mobilenet"
# The recipe: model, data, training step and loop, optimizer, configuration (paths under
# examples/mobilenet; a folder counts every .py file in it).
RECIPE = ("models.py", "input_pipeline.py", "train_state.py", "train.py", "optim.py",
          "sharding.py", "configs")
# The fast operations the model calls: the same values as flax's layers, computed faster
# (depthwise and 1x1 convolutions, batch norm's backward pass, the C++ kernels).
FAST_OPS = ("depthwise.py", "batch_norm.py", "native")
RECIPE_BUDGET = 1500  # Lines, as issue 17 asks ("at most ~1,500"): the goal.
RECIPE_CEILING = 1500  # Lines: 1,495 on 2026-12-06 (from 1,798); may not grow.
ENFORCE_RECIPE_BUDGET = True  # The recipe fits RECIPE_BUDGET (since 2026-12-06).


def _python_files(*roots: str, base: pathlib.Path = ROOT) -> list[pathlib.Path]:
    return sorted(path for root in roots if (base / root).is_dir()
                  for path in (base / root).rglob("*.py"))


def long_functions(base: pathlib.Path = ROOT, max_lines: int = MAX_FUNCTION_LINES
                   ) -> dict[str, int]:
    """``{"path:name": lines}`` of every function under ``base``'s checked trees longer than
    ``max_lines`` (from ``def`` to its last line; decorators aside)."""
    found = {}
    for path in _python_files(*CHECKED, base=base):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    found[f"{path.relative_to(base).as_posix()}:{node.name}"] = lines
    return found


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(EXAMPLE_PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, modules: set[str], package: str) -> set[str]:
    """The example's modules an ``import`` statement names (a name may be a submodule)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # Relative: resolve against this module's package.
        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{parent}.{base}" if base else parent
    named = {f"{base}.{alias.name}" for alias in node.names} & modules
    return named | ({base} & modules if len(named) < len(node.names) else set())


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over ``examples/mobilenet``, imports inside functions
    included (a deferred import still ties two modules together)."""
    paths = {_module_name(path): path for path in _python_files("examples/mobilenet")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(_imported(node, modules, package)
                                    for node in ast.walk(tree))) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines())


def _files(names: tuple[str, ...]) -> set[pathlib.Path]:
    """The source files ``names`` (paths under examples/mobilenet) stand for."""
    return {path for name in names for path in
            ([EXAMPLE_PACKAGE / name] if "." in name
             else (EXAMPLE_PACKAGE / name).rglob("*")) if path.is_file()}


def layout() -> dict[str, dict[str, int]]:
    """``{part: {file: lines}}`` of the example: the recipe, the infrastructure, the fast
    operations (native kernels included), the rest of the package and the scripts of
    ``examples/``."""
    recipe, fast_ops = _files(RECIPE), _files(FAST_OPS)
    parts: dict[str, dict[str, int]] = {"recipe": {}, "infrastructure": {}, "fast ops": {},
                                        "other modules": {}, "scripts": {}}
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.suffix not in (".py", ".cc", ".h") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(EXAMPLE_PACKAGE.parent).as_posix()
        if path in recipe:
            part = "recipe"
        elif "infra" in relative.split("/")[:-1]:
            part = "infrastructure"
        elif path in fast_ops:
            part = "fast ops"
        elif path.parent == ROOT / "examples":
            part = "scripts"
        else:
            part = "other modules"
        parts[part][relative] = _lines(path)
    return parts


def test_no_function_is_over_60_lines():
    too_long = {name: lines for name, lines in long_functions().items()
                if name not in NOT_YET_SPLIT}
    assert not too_long, f"split these functions (at most {MAX_FUNCTION_LINES} lines): {too_long}"


def test_the_long_function_finder_counts_from_def_to_the_last_line(tmp_path):
    (tmp_path / "jrelu6").mkdir()
    body = [f"    x{i} = {i}" for i in range(60)]
    (tmp_path / "jrelu6" / "m.py").write_text("\n".join(
        ["def long():", *body, "", "", "def just_60():", *body[1:],
         "", "", "class A:", "    def method(self):", *["    " + line for line in body]]))
    assert long_functions(tmp_path) == {"jrelu6/m.py:long": 61, "jrelu6/m.py:method": 61}


def test_the_example_has_no_import_cycle():
    graph = import_graph()
    assert {"mobilenet.configs.default", "mobilenet.optim", "mobilenet.train"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_config_module_imports_only_light_modules():
    # --help answers without JAX: the settings import nothing but the machinery of settings.
    graph = import_graph()
    bases = {"mobilenet.infra.run_settings", "mobilenet.quantization_settings"}
    assert graph["mobilenet.configs.default"] == {"mobilenet.infra.settings", *bases}
    assert all(graph[base] == {"mobilenet.infra.settings"} for base in bases)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"a"}}, ["a", "a"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_a_deferred_import_counts():
    source = "def f():\n    from mobilenet import optim\n"
    node = ast.parse(source).body[0].body[0]
    assert _imported(node, {"mobilenet.optim", "mobilenet"}, "mobilenet.configs") == {
        "mobilenet.optim"}


def test_a_relative_import_resolves_against_its_package():
    node = ast.parse("from .settings import setting").body[0]
    assert _imported(node, {"mobilenet.infra.settings"}, "mobilenet.infra") == {
        "mobilenet.infra.settings"}


@pytest.mark.skipif(not ENFORCE_RECIPE_BUDGET,
                    reason=f"the recipe is over its goal of {RECIPE_BUDGET} lines (issue 17); "
                    f"its ceiling of {RECIPE_CEILING} is enforced meanwhile")
def test_the_recipe_fits_its_budget():
    recipe = layout()["recipe"]
    assert sum(recipe.values()) <= RECIPE_BUDGET, recipe


def test_the_recipe_does_not_grow_past_its_ceiling():
    recipe = layout()["recipe"]
    assert sum(recipe.values()) <= RECIPE_CEILING, recipe


def test_the_layout_sorts_every_file_of_the_example_once():
    parts = layout()
    files = [name for part in parts.values() for name in part]
    assert len(files) == len(set(files))
    assert "mobilenet/configs/default.py" in parts["recipe"]
    assert "mobilenet/infra/settings.py" in parts["infrastructure"]
    assert {"mobilenet/batch_norm.py", "mobilenet/native/depthwise.cc"} <= set(parts["fast ops"])
    assert "train.py" in parts["scripts"]


if __name__ == "__main__":
    for part, files in layout().items():
        print(f"{part}: {sum(files.values()):,} lines in {len(files)} files")
        for name, count in files.items():
            print(f"  {count:6,}  {name}")
