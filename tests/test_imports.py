"""The package's import graph: one way only (docs/architecture.md).

Every `soundflow` module is parsed with `ast` (nothing is imported), counting imports inside
functions too: a lazy import still ties two modules together."""

from __future__ import annotations

import ast
from pathlib import Path

import soundflow

ROOT = Path(soundflow.__file__).resolve().parent



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """(importer, imported module, imported name or None) for every soundflow-internal import."""
    out = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, None) for a in node.names if a.name.split(".")[0] == "soundflow"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target.split(".")[0] != "soundflow":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    # `from . import weights` imports a module; `from .model import X` a name
                    out.append((mod, sub, None) if sub in mods else (mod, target, a.name))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    g: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _ in _imports(mods):
        while dst not in mods and "." in dst:  # `import soundflow.bench.x.y` → the module it names
            dst = dst.rsplit(".", 1)[0]
        if dst in mods and dst != src:
            g[src].add(dst)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_cycles():
    """Guards the guard: a two-module loop and a three-module loop are reported, a chain is not."""
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"c"}}
    assert sorted(sorted(c) for c in _cycles(g)) == [["a", "b"], ["c", "d", "e"]]


def test_no_private_names_across_modules():
    mods = _modules()
    bad = [f"{src} imports {dst}.{name}" for src, dst, name in _imports(mods)
           if name is not None and name.startswith("_") and not name.startswith("__") and dst != src]
    assert bad == []


def test_the_model_does_not_import_loading():
    """model.py is the network; checkpoints and loading depend on it, never the reverse."""
    g = _graph()
    assert not g["soundflow.model"] & {"soundflow.checkpoint", "soundflow.loading"}
