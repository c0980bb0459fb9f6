"""The package's internal imports form no cycle (module-level and function-level imports both count)."""
import ast
from pathlib import Path

import timm_mimo

PACKAGE_ROOT = Path(timm_mimo.__file__).parent
PACKAGE = "timm_mimo"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str, modules: set) -> str | None:
    """The package module ``name`` refers to: itself, or its longest known prefix (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict:
    """Maps each package module to the package modules it imports anywhere in its body."""
    files = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for candidate in candidates:
                if candidate.split(".")[0] != PACKAGE:
                    continue
                target = _resolve(candidate, modules)
                # "from pkg import sub" names the submodule; a package importing its own parent is no edge
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict) -> list | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state = {}
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_names_a_hand_built_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "timm_mimo.models" in graph and "timm_mimo.cli.train" in graph
    # analysis.py imports the run folder's writer inside a function only: the edge must still be seen
    assert "timm_mimo.cli.run_folder" in graph["timm_mimo.analysis"]
    # "from timm_mimo.models._heads import MemberHeads" resolves to the module, not to the name
    assert "timm_mimo.models._heads" in graph["timm_mimo.analysis"]


def test_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
