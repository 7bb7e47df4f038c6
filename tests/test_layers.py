"""The package's shape holds: its layers (import-linter's contracts in pyproject.toml), no
import circle, no lmwidget import hidden in a function, and modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter import cli

import lmwidget

PACKAGE = Path(lmwidget.__file__).parent
REPO = PACKAGE.parent
MAX_LINES = 300  # one concept per module


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_the_import_contracts_hold():
    status = cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == 0, "an import crosses lmwidget's layers: its report is printed above"


def imports_in_functions():
    """(where, module imported, relative) of every import statement inside a function."""
    for name, path in modules().items():
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, ast.Import):
                        yield from ((f"{name}:{node.lineno}", a.name, False) for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        yield f"{name}:{node.lineno}", node.module or "", bool(node.level)


def test_no_module_imports_lmwidget_inside_a_function():
    """A deferred import is for an optional heavy dependency (transformers, lightning, ...),
    never to hide a circle between lmwidget's own modules."""
    deferred = [where for where, module, relative in imports_in_functions()
                if relative or module.startswith("lmwidget")]
    assert deferred == []


# what a function may import: optional heavy dependencies (an extra installs them), and modules
# a platform may lack (resource: POSIX; pydoc_data: gone from a trimmed Python, with builtins
# its fallback)
MAY_DEFER = {"transformers", "tokenizers", "lightning", "pytorch_lightning", "tensorboard", "pyarrow",
             "datasets", "safetensors", "accelerate", "google", "resource", "pydoc_data", "builtins"}


def test_functions_import_only_optional_or_platform_modules():
    deferred = [f"{where} {module}" for where, module, relative in imports_in_functions()
                if not relative and module.split(".")[0] not in MAY_DEFER | {"lmwidget"}
                and not module.startswith("torch.utils.tensorboard")]
    assert deferred == []


def test_no_import_circles():
    graph = grimp.build_graph("lmwidget")
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i.startswith("lmwidget")}
             for m in graph.modules if m.startswith("lmwidget")}
    circles = [c for c in _strongly_connected(edges) if len(c) > 1]
    assert circles == []


def test_every_module_is_short_and_says_what_it_is():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    undocumented = [name for name, path in modules().items() if ast.get_docstring(ast.parse(path.read_text())) is None]
    assert undocumented == []


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the import graph's strongly connected components."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found
