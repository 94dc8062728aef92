"""The layering of ../shared/DESIGN.md, enforced by reading every module's imports (ast).

From the ground up, a module imports only from its own layer or a lower one:
1 foundation, 2 mechanics, 3 products, 4 entry points. Products never import each
other (the exceptions DESIGN.md names are listed below, and must stay lazy: inside a
function). No ``cli_*`` imports another ``cli_*``. No private name crosses a module
boundary. No import cycle, lazy imports included. Every module of the package has a
layer: a new module must be placed here, on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "forksafety"

FOUNDATION, MECHANICS, PRODUCTS, ENTRY = 1, 2, 3, 4
# top-level name under forksafety -> (layer, product group or None)
LAYERS: dict[str, tuple[int, str | None]] = {
    # 1 foundation
    "__init__": (FOUNDATION, None), "errors": (FOUNDATION, None), "outcome": (FOUNDATION, None), "variants": (FOUNDATION, None),
    "procinfo": (FOUNDATION, None), "origins": (FOUNDATION, None), "settings": (FOUNDATION, None),
    "versions": (FOUNDATION, None),
    # 2 mechanics
    "watch": (MECHANICS, None), "forkchild": (MECHANICS, None), "capture": (MECHANICS, None),
    "report": (MECHANICS, None), "loopback": (MECHANICS, None),
    # 3 products: the Celery harness, the demo, the checker (check, checkrun, guard, lab, cases), docs, inspect, runners
    "harness": (PRODUCTS, "harness"), "app": (PRODUCTS, "harness"), "broker": (PRODUCTS, "harness"),
    "store": (PRODUCTS, "harness"), "embeddings": (PRODUCTS, "harness"), "startmethod": (PRODUCTS, "harness"),
    "poolstart": (PRODUCTS, "harness"), "escapes": (PRODUCTS, "harness"), "chromaserver": (PRODUCTS, "harness"),
    "demo": (PRODUCTS, "demo"),
    "check": (PRODUCTS, "check"), "checkrun": (PRODUCTS, "check"), "guard": (PRODUCTS, "check"),
    "lab": (PRODUCTS, "check"), "cases": (PRODUCTS, "check"),
    "docs": (PRODUCTS, "docs"),
    "versionsets": (PRODUCTS, "versions"),
    # inspect PID: the verdict on a process that is stuck now (watch rules, procinfo, capture, origins)
    "diagnose": (PRODUCTS, "inspect"),
    "runners": (PRODUCTS, "runners"),
    # 4 entry points
    "cli": (ENTRY, None), "__main__": (ENTRY, None), "bootstrap": (ENTRY, None),
    "pytest_plugin": (ENTRY, None),  # pytest's entry point (pytest11): lazily the guard, nothing else
    "docs_tool": (ENTRY, None),  # make docs' captures of the installed tool, its wheel build (runs our CLIs)
}
# Product -> product imports allowed -> whether they must be lazy (inside a function).
# DESIGN.md: app -> guard, lazy (the Celery hook). The modules that demonstrate the bug
# (DESIGN.md: store, embeddings, demo's child, cases/) share the harness's store,
# embeddings and private redis-server: the demo lazily, the lab's cases (targets the
# checker imports, like a user's task module) at import, on purpose.
ALLOWED_CROSS_PRODUCT = {("app", "guard"): True, ("demo", "store"): True, ("demo", "embeddings"): True,
                         ("cases", "store"): False, ("cases", "broker"): False}


def module_name(path: Path) -> str:
    """``forksafety.check.run`` for forksafety/check/run.py, ``forksafety.check`` for its __init__."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def top(module: str) -> str:
    """The top-level name under forksafety: ``check`` for forksafety.check.run."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str) -> tuple[int, str | None]:
    name = top(module)
    if name.startswith("cli_"):
        return ENTRY, None
    assert name in LAYERS, f"{module} has no layer: place it in LAYERS (tests/test_layers.py) as DESIGN.md says"
    return LAYERS[name]


@pytest.fixture(scope="module")
def imports() -> dict[str, list[tuple[str, list[str], bool, int]]]:
    """module -> [(imported forksafety module, names imported, lazy, line)]."""
    found: dict[str, list[tuple[str, list[str], bool, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        edges = []
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            lazy = id(node) not in top_level
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("forksafety"):
                        edges.append((alias.name, [], lazy, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("forksafety"):
                    continue
                names = [a.name for a in node.names]
                if node.module is None:  # from . import procinfo: each name is a module, or a name of the package
                    folder = PACKAGE.parent.joinpath(*target.split("."))
                    for name in names:
                        if (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists():
                            edges.append((f"{target}.{name}", [], lazy, node.lineno))
                        else:  # from . import __version__: a name of the package's __init__
                            edges.append((target, [name], lazy, node.lineno))
                else:
                    edges.append((target, names, lazy, node.lineno))
        found[mod] = edges
    return found


def test_every_module_has_a_layer(imports):
    for mod in imports:
        layer_of(mod)


def upward_imports(imports) -> list[str]:
    """Every import of a higher layer by a lower one."""
    wrong = []
    for mod, edges in imports.items():
        mine = layer_of(mod)[0]
        for target, _names, _lazy, line in edges:
            theirs = layer_of(target)[0]
            if theirs > mine:
                wrong.append(f"{mod}:{line} (layer {mine}) imports {target} (layer {theirs})")
    return wrong


def test_no_lower_layer_imports_a_higher_one(imports):
    wrong = upward_imports(imports)
    assert not wrong, "\n".join(wrong)


def test_products_do_not_import_each_other(imports):
    wrong = []
    for mod, edges in imports.items():
        layer, group = layer_of(mod)
        if layer != PRODUCTS:
            continue
        for target, _names, lazy, line in edges:
            t_layer, t_group = layer_of(target)
            if t_layer == PRODUCTS and t_group != group:
                must_be_lazy = ALLOWED_CROSS_PRODUCT.get((top(mod), top(target)))
                if must_be_lazy is not None and (lazy or not must_be_lazy):
                    continue
                wrong.append(f"{mod}:{line} ({group}) imports {target} ({t_group})"
                             + ("" if lazy else " at module level"))
    assert not wrong, "\n".join(wrong)


def test_no_cli_module_imports_another(imports):
    wrong = [f"{mod}:{line} imports {target}" for mod, edges in imports.items() if top(mod).startswith("cli_")
             for target, _names, _lazy, line in edges if top(target).startswith("cli_") and top(target) != top(mod)]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_module(imports):
    wrong = [f"{mod}:{line} imports {name} from {target}" for mod, edges in imports.items()
             for target, names, _lazy, line in edges for name in names
             if name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


def import_cycles(imports) -> list[str]:
    """Every import cycle (lazy imports included), as ``a -> b -> a``."""
    modules = set(imports)

    def resolve(target: str) -> str | None:
        """The module file an import reaches (``forksafety.check.Report`` -> ``forksafety.check``)."""
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph = {mod: sorted({r for t, _n, _l, _line in edges if (r := resolve(t)) and r != mod})
             for mod, edges in imports.items()}
    # a package's __init__ importing its own submodules is how a facade works; a submodule
    # importing its parent package back would be the cycle, and is still caught
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for nxt in graph[mod]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
    return cycles


def test_no_import_cycle(imports):
    cycles = import_cycles(imports)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_fire_on_a_violation():
    """The checks themselves can fail: an evidence module importing a product (the cycle
    this layering removed: capture -> check.load_origins, check -> capture)."""
    bad = {"forksafety.capture": [("forksafety.check", ["load_origins"], True, 10)],
           "forksafety.check": [("forksafety.capture", ["_tool_path"], True, 20)]}
    assert upward_imports(bad) == ["forksafety.capture:10 (layer 2) imports forksafety.check (layer 3)"]
    assert import_cycles(bad) == ["forksafety.capture -> forksafety.check -> forksafety.capture"]
