"""The package's dependency order, read from the source (ast): no module imports one above it, and there are no
cycles. Function-local imports count too: they are where cycles hide."""

from __future__ import annotations

import ast
from pathlib import Path

import animatediff

PACKAGE = Path(animatediff.__file__).parent
ORDER = [  # lowest first; a module may import its own layer and those below
    ["errors", "presets"],
    ["motion_module", "motion_conv", "temporal_mixer", "inflation", "components"],
    ["weights", "sampling", "video_io"],  # video_io: readers for generation's input media (it imports only errors)
    ["generation"],
    ["bundled", "recipes"],
    ["api", "batch", "__init__"],  # batch: many jobs over api, split across processes
    ["training", "metrics", "evaluate"],
    ["cli", "ui", "__main__"],
    ["demo"],
]
LAYER = {name: i for i, names in enumerate(ORDER) for name in names}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _layer(module: str) -> int:
    return LAYER[module.split(".")[0]]


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package-internal modules imported by the file at ``path`` (relative and absolute, at any depth)."""
    own = _module(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "animatediff":
                target = node.module.removeprefix("animatediff").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import world` imports the module world
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in modules else target or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("animatediff").lstrip(".") or "__init__" for a in node.names
                      if a.name.split(".")[0] == "animatediff"}
    return {m for m in found if m != own}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {module: _imports(path, modules) for module, path in files.items()}


def test_every_module_has_a_layer():
    assert not [m for m in _graph() if m.split(".")[0] not in LAYER]


def test_no_import_runs_against_the_order():
    wrong = sorted(f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m))
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path + [module, dep]
            if dep not in state and (cycle := visit(dep, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            start = cycle.index(cycle[-1])
            raise AssertionError("import cycle: " + " -> ".join(cycle[start:]))
