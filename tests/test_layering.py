"""The house's rules, read from the imports of every module of the package.

Layers, lowest first: base (errors, registry, artifacts, each system's spec.py) ← runtime (and
the systems contract and every system's numpy files) ← calib ← engines ← export (and every
system's torch files) ← cli. A module imports only its own layer or lower; no import circles
(function-level imports included); no private name imported across modules; no module outside
``wsisam/systems/`` imports a system folder or compares a system name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "wsisam"
LAYERS = {"base": 0, "runtime": 1, "calib": 2, "engines": 3, "batch": 4, "export": 5, "cli": 6}


def sources() -> dict[str, str]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p.read_text(encoding="utf-8")
    return out


def imports(name: str, src: str, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported wsisam module, names taken from it) for every import in ``src``."""
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("wsisam")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("wsisam"):
            subs = [f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in known]
            out += [(s, []) for s in subs]
            names = [a.name for a in node.names if f"{node.module}.{a.name}" not in known]
            if names:
                out.append((node.module, names))
    return out


def uses_torch(src: str) -> bool:
    return any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(
        (getattr(n, "module", None) or a.name).split(".")[0] == "torch" for a in n.names)
        for n in ast.walk(ast.parse(src)))


def layer(name: str, src: str) -> int:
    parts = name.split(".")
    if name in ("wsisam", "wsisam.errors", "wsisam.registry", "wsisam.artifacts",
                "wsisam.systems") or parts[-1] == "spec":
        return LAYERS["base"]
    if parts[1] == "systems":
        return LAYERS["export"] if uses_torch(src) or parts[-1] == "export" else LAYERS["runtime"]
    return LAYERS.get(parts[1], LAYERS["base"])


def violations(mods: dict[str, str]) -> list[str]:
    known = set(mods)
    bad = []
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, src in mods.items():
        own = layer(m, src)
        torch_free = own <= LAYERS["runtime"]
        if torch_free and uses_torch(src):
            bad.append(f"{m} imports torch")
        for target, names in imports(m, src, known):
            if target not in known:
                continue
            graph[m].add(target)
            if layer(target, mods[target]) > own:
                bad.append(f"{m} (layer {own}) imports {target} "
                           f"(layer {layer(target, mods[target])})")
            bad += [f"{m} imports private {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__") and target != m]
            if not m.startswith("wsisam.systems") and target.startswith("wsisam.systems.") \
                    and target != "wsisam.systems.contract":
                bad.append(f"{m} imports the system folder {target}")
    bad += [f"import circle: {' -> '.join(c)}" for c in cycles(graph)]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_keeps_the_rules():
    assert violations(sources()) == []


def test_a_runtime_module_importing_export_is_caught():
    mods = sources()
    mods["wsisam.runtime.segment"] += "\nfrom wsisam.export.run import run_export\n"
    found = violations(mods)
    assert any("wsisam.runtime.segment (layer 1) imports wsisam.export.run" in v for v in found)
    assert any(v.startswith("import circle") for v in found)


def test_no_module_outside_systems_names_a_system():
    for name, src in sources().items():
        if name.startswith("wsisam.systems") or name == "wsisam.registry":
            continue
        for word in ("family", ".system ==", "wsi_sam", "systems.sam"):
            assert word not in src, f"{name} names a system ({word!r})"
