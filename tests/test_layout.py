"""The package's layering (README "Layout"): stages import only the stages below them, and no
module imports itself back through another. Read from the source text (every import statement,
including those inside functions), so a cycle hidden by a function-level import fails here too."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import kvconvert

PKG = Path(kvconvert.__file__).resolve().parent

# lowest first; a module may import its own stage and any stage before it
STAGES = ["base", "formats", "kvcache", "models", "runtime", "testdata", "conversion", "serving", "hub",
          "tui", "commands"]
# top-level modules: the facade (__init__: the public functions), the CLI, the native build script
TOP = {"kvconvert": len(STAGES), "kvconvert.cli": len(STAGES), "kvconvert._build_native": -1,
       "kvconvert._version": -1}
NOT_SOURCE = {"kvconvert._kvc", "kvconvert.profiles"}  # the compiled runtime; the shipped profiles (data)


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The kvconvert modules `name` imports (a `from pkg import mod` counts as the module)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                full = f"{target}.{a.name}"
                if full not in NOT_SOURCE:
                    found.add(full if full in mods else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in mods and m != name}


def _stage(name: str) -> int:
    if name in TOP:
        return TOP[name]
    return STAGES.index(name.split(".")[1])


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_every_module_is_in_a_stage():
    for name in _graph():
        if name not in TOP:
            assert name.split(".")[1] in STAGES, f"{name}: not in a stage folder (README Layout)"


def test_stages_import_only_downward():
    bad = []
    for name, deps in _graph().items():
        if name in ("kvconvert", "kvconvert._build_native"):
            continue
        for d in deps:
            if d != "kvconvert" and _stage(d) > _stage(name):
                bad.append(f"{name} -> {d}")
    assert not bad, "imports up the stages:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    graph.pop("kvconvert", None)  # the facade re-exports; nothing below may import it
    for deps in graph.values():
        deps.discard("kvconvert")
    # Tarjan's strongly connected components
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not sccs, f"import cycles: {sccs}"


def test_nothing_below_imports_the_facade():
    """`kvconvert/__init__` imports the pipeline; a stage importing `kvconvert` itself would loop."""
    users = [name for name, deps in _graph().items() if "kvconvert" in deps and name not in TOP]
    assert not users, f"modules importing the kvconvert package itself: {users}"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle finder is not vacuous: two modules importing each other are reported."""
    a = {"kvconvert.base.a": {"kvconvert.base.b"}, "kvconvert.base.b": {"kvconvert.base.a"}}
    import sys

    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: dict(a), raising=True)
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "kvconvert.base.a" in str(e)
    else:
        raise AssertionError("a two-module cycle was not reported")


def test_textual_is_optional():
    """The library, the CLI and every command but `tui` load without Textual (an optional extra);
    `kvconvert tui` without it says how to install it and exits 2."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys\n"
            "sys.modules['textual'] = None  # as if not installed: any import of it fails\n"
            "import kvconvert, kvconvert.cli, kvconvert.commands as c\n"
            "for m in pkgutil.iter_modules(c.__path__):\n"
            "    importlib.import_module('kvconvert.commands.' + m.name)\n"
            "from kvconvert.cli import main\n"
            "import importlib.util as u\n"
            "u.find_spec = lambda name, *a: None if name == 'textual' else orig(name, *a)\n"
            "sys.exit(main(['tui']))\n")
    code = code.replace("import importlib.util as u\n", "import importlib.util as u\norig = u.find_spec\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "pip install 'kvconvert[tui]'" in r.stderr and r.stderr.count("\n") == 1, r.stderr
