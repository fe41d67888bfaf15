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
    assert "pcam_jax.training.loop" in graph and "pcam_jax.training.selection" in graph["pcam_jax.training.loop"]
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
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def _string_constants(node) -> list[str]:
    return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]


def test_the_registry_is_the_only_list_of_map_methods():
    """No module but maps/registry.py spells out two or more method names in one collection: a
    selection of methods is asked of the registry (its flags) or the stage table."""
    from pcam_jax.maps.registry import METHODS

    registry = PACKAGE / "maps" / "registry.py"
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if path == registry:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = set(_string_constants(node)) & set(METHODS)
            elif isinstance(node, ast.Dict):
                names = {k.value for k in node.keys if isinstance(k, ast.Constant)} & set(METHODS)
            else:
                continue
            if len(names) >= 2:
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {sorted(names)}")
    assert hits == [], hits
    # ... nor names a literal list of them (X_METHODS = ("...", ...)) as a second list would be.
    literal_lists = [f"{p.relative_to(PACKAGE.parent)}:{node.lineno}" for p in PACKAGE.rglob("*.py") if p != registry
                     for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id.endswith("METHODS") for t in node.targets)
                     and isinstance(node.value, (ast.Tuple, ast.List, ast.Set))]
    assert literal_lists == [], literal_lists


def _config_fields() -> set[str]:
    from pcam_jax.configs import get_config

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield key
    return set(leaves(get_config("base").to_dict()))


def test_no_module_outside_configs_restates_a_config_default():
    """``x.get("field", default)`` / ``getattr(x, "field", default)`` with a config field's name
    restate base.py's default (and may disagree with it): a config is complete
    (`pcam_jax.configs.complete` for a restored one), so code reads ``config.section.field``."""
    fields = _config_fields()
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if "configs" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            func = node.func
            is_get = isinstance(func, ast.Attribute) and func.attr == "get" and len(node.args) == 2
            is_getattr = isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) == 3
            name = node.args[0 if is_get else 1] if (is_get or is_getattr) else None
            if isinstance(name, ast.Constant) and name.value in fields:
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {ast.unparse(node)}")
    assert hits == [], hits


def test_the_package_top_level_stays_walkable():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 17, entries  # 17th: labelling/ (issue 23: select and label), as the #23 brief placed it
