"""The code's shape, enforced: what may import what, and no import cycles.

- synth/ is arrays in, arrays out: it never imports a DICOM library or dicom_node.
- synth's runtime (everything outside synth/research/, the `python -m synth` dispatcher aside, which
  names research commands by string) never imports synth.research.
- dicom_node imports only synth's runtime API (RUNTIME_API).
- No import cycle among the modules of dicom_node or synth; imports under `if TYPE_CHECKING:` are
  annotations only and do not count. Imports inside functions (lazy imports) do count.
- No module of dicom_node or synth over MAX_MODULE_LINES lines (migrations aside): split it by job.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYNTH = ROOT / "synth"
FORBIDDEN = {"pydicom", "pynetdicom", "highdicom", "dicom_node"}
RUNTIME_API = {"synth", "synth.volume", "synth.seam", "synth.backends", "synth.config", "synth.selfcheck"}
PACKAGES = ("dicom_node", "synth")
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, *, type_checking: bool = False) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved); TYPE_CHECKING blocks are
    skipped unless `type_checking`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)   # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in _files(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imported_modules(path) if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_synth_imports_no_dicom_library() -> None:
    files = _files("synth")
    assert files, "synth/ has no Python files"
    offenders = {str(p.relative_to(SYNTH)): sorted(_roots(imported_modules(p)) & FORBIDDEN) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_synth_runtime_never_imports_research() -> None:
    runtime = [p for p in _files("synth") if "research" not in p.relative_to(SYNTH).parts
               and p.name not in ("cli.py", "__main__.py")]
    offenders = {str(p.relative_to(SYNTH)): sorted(m for m in imported_modules(p) if m.startswith("synth.research"))
                 for p in runtime}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dicom_node_imports_only_the_synth_runtime_api() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p)
                                                  if m.split(".")[0] == "synth" and m not in RUNTIME_API
                                                  and m.rpartition(".")[0] not in RUNTIME_API - {"synth"})
                 for p in _files("dicom_node")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_web_sees_the_node_only_through_its_operations() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p, type_checking=True)
                                                  if m == "dicom_node.app" or m.startswith("dicom_node.app."))
                 for p in sorted((ROOT / "dicom_node" / "web").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def long_modules(root: Path = ROOT) -> dict[str, int]:
    """Modules over MAX_MODULE_LINES lines, by path, with their line counts."""
    found: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.relative_to(root).parts:
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_MODULE_LINES:
                found[str(path.relative_to(root))] = lines
    return found


def test_no_module_is_over_the_line_limit() -> None:
    assert long_modules() == {}


def test_the_line_limit_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "synth" / "migrations").mkdir(parents=True)
    (tmp_path / "dicom_node").mkdir()
    (tmp_path / "synth" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "synth" / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "synth" / "migrations" / "0001.py").write_text("x = 1\n" * 900)
    assert long_modules(tmp_path) == {"synth/long.py": MAX_MODULE_LINES + 1}


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    bad = ROOT / "synth" / "_layering_probe_tmp.py"      # resolved like a real synth module
    try:
        bad.write_text("import numpy\nfrom pydicom import dcmread\nfrom synth.research import train\n"
                       "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dicom_node import app\n")
        found = imported_modules(bad)
        assert _roots(found) & FORBIDDEN == {"pydicom"}            # the TYPE_CHECKING import is skipped
        assert "synth.research.train" in found
    finally:
        bad.unlink()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
