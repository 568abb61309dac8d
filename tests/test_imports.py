"""The package's modules import one another down the pipeline only: no circles, lazy ones included.

Every ``import mlxllm...`` of every module counts (at module level, inside functions, under
``TYPE_CHECKING``), so that no module depends, even for a moment, on one that depends on it.
"""

import ast
from pathlib import Path

import mlxllm
from mlxllm.config import FAMILY_NAMES

PACKAGE = Path(mlxllm.__file__).parent


def module_names() -> dict[str, Path]:
    """{"mlxllm.tokenizer.bpe": path, "mlxllm.tokenizer": .../tokenizer/__init__.py, ...}"""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its code.

    ``from a import b`` imports the module ``a.b`` when there is one, else a name from ``a``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .files import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names}
    return {module for module in found if module in modules and module != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []  # state: "open" while on the stack, "done" after

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_imports_form_no_circle():
    modules = module_names()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["mlxllm.tokenizer.bpe"] >= {"mlxllm.tokenizer.files", "mlxllm.tokenizer.chat"}
    assert "mlxllm.data" in graph["mlxllm.cli"]  # from mlxllm import data: the module
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_family_names_are_the_registered_families():
    from mlxllm.pretrained import FAMILIES

    assert FAMILY_NAMES == tuple(FAMILIES)
