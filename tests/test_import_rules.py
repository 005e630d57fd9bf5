"""The dependency direction of docs/ARCHITECTURE.md, read from the source with an AST walk.

- runtime/ imports no torch and nothing of train/ at module level, and nothing of export/ at all;
  inside functions only the torch backend (``runtime/backends.py``) imports torch and train's
  checkpoint loader;
- train/ imports nothing of export/.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# (file, imported package) pairs allowed inside a function of the runtime: the one lazy torch backend
RUNTIME_LAZY_EXCEPTIONS = {("runtime/backends.py", "torch"), ("runtime/backends.py", "nanoplus.train")}


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import statement of a file.

    Module level is everything that runs on import: top-level statements, also inside if / try /
    with blocks and class bodies; a function body runs only when called."""
    found = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, module_level, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, module_level, child.lineno))
            visit(child, module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


def is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(folder: str, rule) -> list[str]:
    out = []
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        for module, module_level, line in imports(path):
            problem = rule(rel, module, module_level)
            if problem:
                out.append(f"{rel}:{line}: {problem}")
    return out


def runtime_rule(rel: str, module: str, module_level: bool):
    if is_in(module, "nanoplus.export"):
        return f"imports {module}: the runtime never imports export"
    for package in ("torch", "nanoplus.train"):
        if is_in(module, package):
            if module_level:
                return f"imports {module} at module level: the runtime runs without torch"
            if (rel, package) not in RUNTIME_LAZY_EXCEPTIONS:
                return f"imports {module}: only the torch backend (runtime/backends.py) may, lazily"
    return None


def train_rule(rel: str, module: str, module_level: bool):
    return f"imports {module}: train never imports export" if is_in(module, "nanoplus.export") else None


def test_runtime_imports_no_torch_train_or_export():
    assert violations("runtime", runtime_rule) == []


def test_train_imports_nothing_of_export():
    assert violations("train", train_rule) == []


def test_the_lazy_torch_backend_is_still_the_one_exception():
    """The named exception exists (a stale exception list would hide a moved import)."""
    lazy = {(module, level) for module, level, _ in imports(REPO_ROOT / "runtime" / "backends.py")
            if is_in(module, "torch") or is_in(module, "nanoplus.train")}
    assert lazy and not any(level for _, level in lazy)


FORBIDDEN = {  # a runtime file's source -> what the rules must say about it
    "import torch\n": "at module level",
    "try:\n    import torch.nn\nexcept ImportError:\n    pass\n": "at module level",
    "def f():\n    from nanoplus.train.model import build_model\n": "only the torch backend",
    "class A:\n    from nanoplus.export import parity\n": "never imports export",
}


@pytest.mark.parametrize("source", FORBIDDEN)
def test_the_rules_catch_a_forbidden_import(tmp_path, source):
    (tmp_path / "mod.py").write_text(source)
    problems = [runtime_rule("runtime/mod.py", module, level) for module, level, _ in imports(tmp_path / "mod.py")]
    assert any(FORBIDDEN[source] in (p or "") for p in problems), problems
