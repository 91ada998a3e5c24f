"""The package's import graph, read from the source with ``ast`` (nothing is imported): no cycles, no private names
imported across modules, no machine paths. A new cycle or private import fails here with the edges named.

Imports inside functions count: a lazy import that closes a cycle still ties the two modules together, and so does
``importlib.import_module("mcmfh...")`` with a literal name (a registry that loads its plug-ins). A private
*module* of a package (``mcmfh.index._kernels``) may be imported by modules of that package; a private *name* from
another module may not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mcmfh"

# Cycles and private imports tolerated for now, by name (none: keep it that way). An entry must still exist, so
# the lists can only shrink; anything not listed fails.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def read_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module -> modules it imports, [(importer, source module, private name)]) for every module of ``package``."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    private: list[tuple[str, str, str]] = []
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif _dynamic_import(node):  # importlib.import_module("mcmfh.x"): an import by another spelling
                targets = [(node.args[0].value, None)]  # type: ignore[attr-defined]
            elif isinstance(node, ast.ImportFrom):
                src = resolve(mod, is_pkg, node.level, node.module)
                targets = []
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in files:  # `from pkg import submodule`
                        targets.append((sub, None))
                    else:
                        targets.append((src, a.name))
            else:
                continue
            for target, name in targets:
                while target and target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]  # `import a.b.c` of a name inside a.b
                if target not in files or target == mod:
                    continue
                graph[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append((mod, target, name))
            private.extend((mod, t, "module") for t, _ in targets if _private_module_outside(mod, t, files))
    return graph, private


def _dynamic_import(node: ast.AST) -> bool:
    """``importlib.import_module("<literal>")`` or ``import_module("<literal>")``."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return False
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
    return name == "import_module" and isinstance(node.args[0].value, str)


def _private_module_outside(importer: str, target: str, files: dict[str, Path]) -> bool:
    """``target`` is a private module (a ``_name`` part) imported from outside the package that holds it."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__") and target in files:
            owner = ".".join(parts[:i])
            return not (importer == owner or importer.startswith(owner + "."))
    return False


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edges_in(comp: list[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp)


def test_no_import_cycles():
    graph, _ = read_graph(SRC, PACKAGE)
    found = {frozenset(c) for c in cycles(graph)}
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, "import cycles: " + " | ".join(_edges_in(c, graph) for c in new)
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not gone, f"these known cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_no_private_names_imported_across_modules():
    _, private = read_graph(SRC, PACKAGE)
    found = {(a, f"{b}.{n}") for a, b, n in private}
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, f"private names imported across modules (make them public or move them): {new}"
    gone = sorted(KNOWN_PRIVATE - found)
    assert not gone, f"these known private imports are gone: remove them from KNOWN_PRIVATE: {gone}"


# The store contract (mcmfh.index.store): a store declares what it can do (``capabilities``), so no module that uses
# stores asks which class it holds or probes for an attribute. Only the modules that implement or open stores name
# their classes. Tolerated checks, as (module, check): none, and the list can only shrink.
STORE_CLASSES = {"ItemIndex", "ServerStore", "SqliteMeta", "PostgresMeta", "MilvusIndex", "PostgresItemStore"}
STORE_MODULES = {"mcmfh.index.local_store", "mcmfh.index.server_store", "mcmfh.index.backends"}
KNOWN_STORE_PROBES: set[tuple[str, str]] = set()


def store_probes(root: Path, package: str) -> set[tuple[str, str]]:
    """(module, check) for every ``isinstance(x, <store class>)`` outside the store modules, and every ``getattr`` /
    ``hasattr`` in the archive's modules (the ``mcmfh.archive`` package), whose one dynamic object kind is a store."""
    found = set()
    for path in sorted((root / package).rglob("*.py")):
        mod = module_name(path, root)
        if mod in STORE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id == "isinstance" and len(node.args) == 2:
                named = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
                found.update((mod, f"isinstance {c}") for c in named & STORE_CLASSES)
            elif node.func.id in ("getattr", "hasattr") and mod.split(".")[1].startswith("archive"):
                found.add((mod, f"{node.func.id} line {node.lineno}"))
    return found


def test_no_store_is_asked_its_class_or_probed():
    found = store_probes(SRC, PACKAGE)
    new = sorted(found - KNOWN_STORE_PROBES)
    assert not new, f"stores checked by class or probed (declare it in Capabilities / ItemStore instead): {new}"
    gone = sorted(KNOWN_STORE_PROBES - found)
    assert not gone, f"these known store probes are gone: remove them from KNOWN_STORE_PROBES: {gone}"


def test_the_store_probe_checker_finds_both_kinds(tmp_path):
    pkg = tmp_path / "mcmfh"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    archive = pkg / "archive"
    archive.mkdir()
    (archive / "__init__.py").write_text("")
    (archive / "x.py").write_text("def f(ix):\n    return isinstance(ix, (int, ItemIndex)) or hasattr(ix, 'a')\n")
    (pkg / "other.py").write_text("def f(ix):\n    return getattr(ix, 'a', isinstance(ix, s.ServerStore))\n")
    assert store_probes(tmp_path, "mcmfh") == {
        ("mcmfh.archive.x", "isinstance ItemIndex"),
        ("mcmfh.archive.x", "hasattr line 2"),
        ("mcmfh.other", "isinstance ServerStore"),
    }


def test_no_machine_paths_in_the_package_docs_and_benchmarks():
    machine = re.compile(r"(/work/|/home/\w+|/root/|/tmp/pytest|C:\\\\Users)")
    root = SRC.parent
    files = [*(SRC / PACKAGE).rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "docs").rglob("*.md"),
             *(root / "configs").rglob("*.yaml"), root / "README.md"]  # fmt: skip
    hits = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        hits += [f"{path.relative_to(root)}:{i}" for i, line in enumerate(lines, 1) if machine.search(line)]
    assert len(files) > 50 and not hits, hits


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import a  # lazy, still a cycle\nthing = 1\n")
    (pkg / "c.py").write_text("from toy.sub.d import _hidden\nfrom toy.sub import _impl\n")
    (pkg / "sub" / "d.py").write_text("_hidden = 1\n")
    (pkg / "sub" / "_impl.py").write_text("")
    (pkg / "sub" / "e.py").write_text("from toy.sub import _impl  # inside its own package: fine\n")
    graph, private = read_graph(tmp_path, "toy")
    assert cycles(graph) == [["toy.a", "toy.b"]]
    assert sorted(private) == [("toy.c", "toy.sub._impl", "module"), ("toy.c", "toy.sub.d", "_hidden")]
