"""The engine's shape: no import cycle inside kdistill/ (counting imports inside functions, so none can hide one),
the orchestration never imported by the engine, and pipelines/ built on the engine, never on the steps in tasks/."""

import ast
from pathlib import Path

from .conftest import ROOT


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module an import statement in `path` names, wherever the statement is (top level or in a function)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    # `if TYPE_CHECKING:` blocks never run: a name for the type checker is not an import
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def _graph(top: str) -> dict[str, set[str]]:
    files = sorted((ROOT / top).rglob("*.py"))
    names = {_module_name(f) for f in files}
    graph = {}
    for f in files:
        me = _module_name(f)
        # importing a.b.c runs a and a.b too; a package's own __init__ importing its children is not a cycle
        graph[me] = {n for n in _imports(f) if n in names and n != me and not me.startswith(n + ".")
                     and not (f.name == "__init__.py" and n.startswith(me + "."))}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_engine():
    graph = _graph("kdistill")
    assert len(graph) > 30 and "kdistill.distill.objectives" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_engine_imports_no_orchestration_and_pipelines_no_steps():
    for f in (ROOT / "kdistill").rglob("*.py"):
        bad = {n for n in _imports(f) if n.split(".")[0] in ("prefect", "dvc", "tasks", "pipelines")}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"
    for f in (ROOT / "pipelines").rglob("*.py"):
        bad = {n for n in _imports(f) if n.split(".")[0] == "tasks"}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}: pipelines/ builds on kdistill, not on the steps"


def test_the_engine_parts_show_in_their_folders():
    for part, modules in {"data": {"glue", "corpus", "batches", "augment", "splits", "task", "tables"},
                          "distill": {"losses", "attention", "layer_map", "objectives", "features", "teacher_cache"},
                          "train": {"trainer", "distributed", "precision", "dropout", "phases", "evaluation"},
                          "deploy": {"onnx_export", "onnx_fusion", "serving_model", "speed"}}.items():
        assert modules <= {f.stem for f in (ROOT / "kdistill" / part).glob("*.py")}, part
