"""The package's structure, checked: no import circle, the stage table the only stage branch.

The import graph is read from the source with `ast` (imports at module level and inside
functions alike), so a lazy import cannot hide a circle.
"""

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pcam_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: project modules it imports}, every `import` statement of every module."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pcam_jax.training import losses` imports the module pcam_jax.training.losses;
                # `from pcam_jax.maps import cam` imports pcam_jax.maps
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            targets |= {t for t in found if t in modules and t != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _package_graph(graph):
    """The same graph between subpackages (pcam_jax.training, pcam_jax.evaluation, ...)."""
    group = lambda m: ".".join(m.split(".")[:2])
    out = {}
    for source, targets in graph.items():
        out.setdefault(group(source), set()).update(group(t) for t in targets if group(t) != group(source))
    return out


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_between_modules_or_subpackages():
    graph = import_graph()
    assert "pcam_jax.training.loop" in graph and "pcam_jax.metrics.classification" in graph["pcam_jax.training.loop"]
    assert find_cycle(graph) is None
    # The package level hides nothing either; cli is the top (it imports everything, nothing imports it).
    packages = _package_graph(graph)
    assert find_cycle({k: v - {"pcam_jax"} for k, v in packages.items()}) is None, packages
    assert not any("pcam_jax.cli" in targets for name, targets in packages.items() if name != "pcam_jax.cli")


def test_only_the_stage_table_branches_on_the_stage_number():
    pattern = re.compile(r"stage\s*(==|>=|<=|!=|>|<)\s*\d")
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert all(hit.startswith("pcam_jax/training/stages.py") for hit in hits), hits


def test_no_module_grows_past_the_size_of_one_idea():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}
