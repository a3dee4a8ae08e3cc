"""The package layout: no import circle among pipeline's modules, and params that validate without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(roots: tuple[str, ...] = ("pipeline", "stages")) -> dict[str, set[str]]:
    """Each module of `roots` -> the modules of `roots` it imports anywhere in its body (at the top, in a
    function, under TYPE_CHECKING), with the packages those sit in, which Python runs first."""
    modules = {module_name(p): p for root in roots for p in (REPO / root).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: from the module's own package
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + [node.module])
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
        graph[name] = edges - {name} - {p for p in modules if name.startswith(p + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_pipeline_or_stages_imports_itself_through_others():
    graph = import_graph()
    assert {"pipeline.compose.rows", "pipeline.compose.generate", "stages.sample"} <= graph.keys()
    assert "pipeline.compose.rows" in graph["pipeline.compose.generate"]  # the walk sees imports
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def _heavy_modules_after(code: str) -> str:
    code += "; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')))"
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "params.yaml")], capture_output=True,
                         text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_loading_params_does_not_import_torch():
    assert _heavy_modules_after("import sys; import pipeline.params as p; p.load_params(sys.argv[1])") == "[]"


def test_building_the_cli_does_not_import_torch():
    # `dmc --help`, `dmc download` and `dmc ui` should not pay torch's import time.
    assert _heavy_modules_after("import sys; import pipeline.cli as c; c._parser()") == "[]"
