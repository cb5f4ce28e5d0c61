"""The package's import graph: one way only (docs/architecture.md).

Every `soundflow` module is parsed with `ast` (nothing is imported), counting imports inside
functions too: a lazy import still ties two modules together."""

from __future__ import annotations

import ast
from pathlib import Path

import soundflow

ROOT = Path(soundflow.__file__).resolve().parent

# Pairs still known to import each other. Keep this empty when you can; each entry names
# its reason. data.load_streams dispatches to interop.load_conversations, and interop reads and
# writes data.StreamSample (issue 14, handled with the data module).
ALLOWED_CYCLES = {frozenset({"soundflow.data", "soundflow.interop"})}


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
    g = _graph()
    for pair in ALLOWED_CYCLES:  # drop one edge of each known pair, then nothing else may loop
        a, b = sorted(pair)
        g[a].discard(b)
    assert _cycles(g) == []


def test_allowed_cycles_are_still_cycles():
    """An exception that no longer applies is removed from ALLOWED_CYCLES, not kept."""
    g = _graph()
    for pair in ALLOWED_CYCLES:
        a, b = sorted(pair)
        assert b in g[a] and a in g[b], f"{a} and {b} no longer import each other: drop the exception"


def test_no_private_names_across_modules():
    mods = _modules()
    bad = [f"{src} imports {dst}.{name}" for src, dst, name in _imports(mods)
           if name is not None and name.startswith("_") and not name.startswith("__") and dst != src]
    assert bad == []


def test_the_model_does_not_import_loading():
    """model.py is the network; checkpoints and loading depend on it, never the reverse."""
    g = _graph()
    assert not g["soundflow.model"] & {"soundflow.checkpoint", "soundflow.loading"}
