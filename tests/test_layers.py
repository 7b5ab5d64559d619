"""The package's layers import only downward, only public names, and without cycles.

Read from the source (``ast``), not by importing: module-level imports are what runs when the
package loads (imports under ``if TYPE_CHECKING:`` and inside functions are left out).
"""

import ast
from pathlib import Path

import pytest

import sctrvae

SRC = Path(sctrvae.__file__).parent
#: Layers that must not import another: the module only does tensors (it receives a minibatch's
#: covariates, it does not read the AnnData), and the training layer logs scores without
#: importing the scoring package (scanpy and all).
FORBIDDEN = {
    "sctrvae.module": ("sctrvae.data", "sctrvae.train", "sctrvae.model", "sctrvae.metrics"),
    "sctrvae.distributions": ("sctrvae.data", "sctrvae.train", "sctrvae.model", "sctrvae.module"),
    "sctrvae.train": ("sctrvae.model", "sctrvae.metrics", "sctrvae.tl", "sctrvae.pl"),
    "sctrvae.data": ("sctrvae.train", "sctrvae.model", "sctrvae.metrics"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def top_level_imports(tree: ast.Module):
    """``import`` / ``from ... import`` statements that run at import time."""
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body


def resolve(name: str, node: ast.ImportFrom, path: Path) -> str:
    package = name if is_package(path) else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    if node.level == 0:
        return node.module
    return f"{package}.{node.module}" if node.module else package


def package_imports():
    """Per module of sctrvae: the (module, imported names) it imports of sctrvae."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    imports = {}
    for name, path in modules.items():
        found = []
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if a.name.startswith("sctrvae")]
            else:
                target = resolve(name, node, path)
                if target.startswith("sctrvae"):
                    found.append((target, [a.name for a in node.names]))
        imports[name] = found
    return modules, imports


MODULES, IMPORTS = package_imports()


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_a_layer_imports_no_layer_above_it(layer):
    wrong = [
        (name, target)
        for name, found in IMPORTS.items()
        if name == layer or name.startswith(f"{layer}.")
        for target, _ in found
        if target.startswith(FORBIDDEN[layer])
    ]
    assert not wrong


def test_no_module_imports_a_private_name_of_another():
    private = [
        (name, target, imported)
        for name, found in IMPORTS.items()
        for target, names in found
        for imported in names
        # a private submodule (``from . import _threads``) is a module, not a private name
        if imported.startswith("_")
        and not imported.startswith("__")
        and f"{target}.{imported}" not in MODULES
    ]
    assert not private


def test_the_imports_have_no_cycle():
    def edges(name):
        for target, names in IMPORTS[name]:
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES] or [target]
            # importing a.b.c runs the packages a.b and a first, unless the importer is inside
            parents = [".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)]
            for t in [*targets, *parents]:
                if t in MODULES and not name.startswith(f"{t}.") and t != name:
                    yield t

    state = {}

    def visit(name, stack):
        state[name] = "open"
        for t in edges(name):
            assert state.get(t) != "open", " -> ".join([*stack, name, t])
            if t not in state:
                visit(t, [*stack, name])
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [])
