"""The package's import graph, read from the source (ast, nothing imported): no cycle between files, and
every import points down the stage floors (docs/CONTRACTS.md, the project's design notes):

    errors → data → models → {mining, eval, reasoning} → {train, embed_rl} → demo → cli

Every import counts, also the ones inside functions (a lazy import is still an arrow) and those under
`if TYPE_CHECKING:` (annotations only: no arrow at run time, but a file that names a higher one's class in an
annotation still reaches up into it; issue #14). Stages on the same floor do not import each other either: they
talk through files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# floor of each top-level part of the package; a module's floor is that of `unime.<part>`
FLOORS = {
    "unime.errors": 0, "unime.options": 0.5, "unime.process_group": 1,  # options raise OptionError
    "unime.parent_death": 1,  # worker processes that end with their launcher (the demo's workers, torchrun ranks)
    "unime.data": 1,
    "unime.outdir": 1.5,  # output folders and files: atomic writes from unime.data.atomic
    "unime.models": 2,
    "unime.index": 2.5,
    "unime.mining": 3, "unime.eval": 3, "unime.reasoning": 3, "unime.serve": 3,
    "unime.train": 4, "unime.embed_rl": 4,
    "unime.demo": 5,
    "unime.cli": 6,
    "unime.__main__": 7,  # `python -m unime`: the command line, run
}
# `unime/__init__.py` is the public facade (`from unime import Embedder`, lazily): above everything,
# and nothing in the package imports it.
FACADE = "unime"

# Known exceptions, named so they cannot grow unnoticed (none left: the demo calls the stage functions,
# `unime.demo.stage_calls`, not the CLI; the MMEB-V2 reader and scorer sit with the other formats' in
# `unime.eval.tasks` / `unime.eval.runners`, which import the format's rules from `unime.eval.mmeb_v2`).
ALLOWED_UPWARD: set[tuple[str, str]] = set()
ALLOWED_CYCLES: list[set[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in sorted((SRC / "unime").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _owner(name: str, mods) -> str | None:
    """The module file that `name` (a module, or a name inside one) lives in."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(*, annotations: bool = False) -> dict[str, set[str]]:
    """module → the package modules it imports (anywhere in the file; `annotations`: also under
    `if TYPE_CHECKING:`)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree) if annotations else _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from unime.x import y`: y may be a module of its own
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            targets |= {t for n in names if n.split(".")[0] == "unime" and (t := _owner(n, mods))}
        targets.discard(mod)
        graph[mod] = targets
    return graph


def floor_of(mod: str) -> tuple[str, int]:
    for part, floor in FLOORS.items():
        if mod == part or mod.startswith(part + "."):
            return part, floor
    raise KeyError(mod)


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        if mod == FACADE:
            continue
        part, floor = floor_of(mod)
        for t in sorted(targets):
            if t == FACADE:
                bad.append(f"{mod} -> {t} (the facade is for users; import the module itself)")
                continue
            t_part, t_floor = floor_of(t)
            if (mod, t) in ALLOWED_UPWARD:
                continue
            if t_floor > floor:
                bad.append(f"{mod} -> {t} (floor {floor} {part} imports floor {t_floor} {t_part})")
            elif t_floor == floor and t_part != part:
                bad.append(f"{mod} -> {t} (sibling stages {part} and {t_part} on floor {floor})")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_reader_sees_relative_lazy_and_from_package_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "unime"
    (pkg / "data").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from unime.models import b\n")
    (pkg / "models" / "__init__.py").write_text("from . import b\n")
    (pkg / "models" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom ..data.a import f\n"
                                         "import unime.errors\nimport numpy\nif TYPE_CHECKING:\n"
                                         "    from unime import models\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    g = import_graph()
    assert g["unime.data.a"] == {"unime.models.b"}
    assert g["unime.models"] == {"unime.models.b"}
    assert g["unime.models.b"] == {"unime.data.a", "unime.errors"}
    assert import_graph(annotations=True)["unime.models.b"] == {"unime.data.a", "unime.errors", "unime.models"}
    assert cycles(g) == [{"unime.data.a", "unime.models.b"}]
    assert upward_imports(g) == ["unime.data.a -> unime.models.b (floor 1 unime.data imports floor 2 unime.models)"]


def test_every_module_has_a_floor(graph):
    unplaced = [m for m in graph if m != FACADE and m.count(".") >= 1 and _try_floor(m) is None]
    assert not unplaced, f"add these to FLOORS: {unplaced}"


def _try_floor(mod):
    try:
        return floor_of(mod)
    except KeyError:
        return None


def test_no_import_cycle_between_files(graph):
    found = [c for c in cycles(graph) if c not in ALLOWED_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in found)


def test_no_import_cycle_between_files_even_through_annotation_only_imports():
    found = [c for c in cycles(import_graph(annotations=True)) if c not in ALLOWED_CYCLES]
    assert not found, "import cycles (counting `if TYPE_CHECKING:` imports):\n" + "\n".join(
        " <-> ".join(sorted(c)) for c in found)


def test_imports_point_down_the_stage_floors():
    bad = upward_imports(import_graph(annotations=True))
    assert not bad, "imports that point up (or sideways between stages):\n" + "\n".join(bad)


def test_the_allowances_are_still_needed(graph):
    """When the demo stops calling the CLI, the allowances must go (so they cannot hide a new arrow)."""
    for mod, target in ALLOWED_UPWARD:
        assert target in graph[mod], f"{mod} no longer imports {target}: remove it from ALLOWED_UPWARD"
    found = cycles(graph)
    for allowed in ALLOWED_CYCLES:
        assert allowed in found, f"the cycle {sorted(allowed)} is gone: remove it from ALLOWED_CYCLES"


# -- the tests' own imports: a helper shared between test files lives in a helper module ----------------------
TESTS = Path(__file__).resolve().parent


def imports_of_test_modules(root: Path) -> list[str]:
    """`file -> module` for every import (anywhere in a file under `root`) of a `test_*` module of the tests.

    Shared helpers live in non-test modules: `tests/<folder>/helpers.py` beside the tests they come from
    (the top-level `tests/bad_inputs.py` and `tests/captioned_folder.py` serve several folders); fixtures in
    `conftest.py`. Importing a test module would run its module-level code and rebind its test functions
    in another file, and hides which file owns a helper."""
    def is_test_module(name: str) -> bool:
        return name.startswith(("tests.", ".")) and any(p.startswith("test_") for p in name.split("."))

    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                # `from tests.x.test_y import z` names the module; `from tests.x import test_y` the alias
                names = [base] if is_test_module(base) else \
                    [f"{base}{'' if base.endswith('.') else '.'}{a.name}" for a in node.names]
            else:
                continue
            bad += [f"{path.relative_to(root).as_posix()} -> {n}" for n in names if is_test_module(n)]
    return sorted(bad)


def test_the_test_import_reader_finds_imports_of_test_modules(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "helpers.py").write_text("def build_world(): ...\n")
    (tmp_path / "eval" / "test_a.py").write_text("from tests.eval.helpers import build_world\nimport json\n")
    (tmp_path / "eval" / "test_b.py").write_text("def test_x():\n    from tests.eval.test_a import build_world\n")
    (tmp_path / "test_c.py").write_text("import tests.eval.test_a\nfrom tests.eval import test_b\n"
                                        "from .eval.test_a import x\n")
    (tmp_path / "test_d.py").write_text("from . import test_c, helpers\nfrom tests import conftest\n")
    assert imports_of_test_modules(tmp_path) == [
        "eval/test_b.py -> tests.eval.test_a", "test_c.py -> .eval.test_a", "test_c.py -> tests.eval.test_a",
        "test_c.py -> tests.eval.test_b", "test_d.py -> .test_c"]


def test_test_modules_import_helpers_only_from_helper_modules():
    bad = imports_of_test_modules(TESTS)
    assert not bad, "move these helpers into a helper module (tests/<folder>/helpers.py):\n" + "\n".join(bad)
