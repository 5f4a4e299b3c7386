"""The tokenizer package's modules import each other one way only, at the top of each file.

A function-local import can hide a loop (it once closed bpe -> bpe_fast -> bpe_train -> bpe), so
every import of an `llmlab.tokenizer` module is read from the source, wherever it sits.
"""

import ast
import graphlib
from pathlib import Path

import llmlab.tokenizer

PACKAGE = "llmlab.tokenizer"
ROOT = Path(llmlab.tokenizer.__file__).parent
MODULES = {p.stem: p for p in ROOT.glob("*.py")}  # "__init__" is the package itself
# Optional, heavier readers that `load_tokenizer` loads only for the files that need them.
LAZY_ALLOWED = {("__init__", "hf"), ("__init__", "pretrained")}


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The tokenizer modules (by stem; "__init__" for the package) that one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        module = node.module or ""
        if node.level:  # relative: `from . import x`, `from .bpe import y`
            module = ".".join([PACKAGE, module]).rstrip(".")
        if module == PACKAGE:  # `from llmlab.tokenizer import x`: a submodule or a name from __init__
            names = [f"{PACKAGE}.{a.name}" if a.name in MODULES else PACKAGE for a in node.names]
        else:
            names = [module]
    found = []
    for name in names:
        if name == PACKAGE:
            found.append("__init__")
        elif name.startswith(PACKAGE + "."):
            found.append(name[len(PACKAGE) + 1 :].split(".")[0])
    return found


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> tokenizer modules it imports anywhere, the (module, imported) pairs inside functions)."""
    graph: dict[str, set[str]] = {}
    local: set[tuple[str, str]] = set()
    for stem, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        graph[stem] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_modules(node):
                    graph[stem].add(target)
                    if id(node) not in top:
                        local.add((stem, target))
    return graph, local


def test_tokenizer_modules_import_each_other_without_cycles():
    graph, _ = import_graph()
    assert {"bpe", "bpe_encode", "bpe_train", "bpe_fast"} <= set(graph)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle among tokenizer modules: {' -> '.join(e.args[1])}") from None
    position = {m: i for i, m in enumerate(order)}
    assert position["bpe_encode"] < position["bpe_train"] < position["bpe_fast"] < position["bpe"]


def test_tokenizer_modules_import_each_other_at_the_top():
    _, local = import_graph()
    assert local - LAZY_ALLOWED == set()


def test_pair_is_defined_once():
    defining = [stem for stem, path in MODULES.items()
                if any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "Pair" for t in n.targets)
                       for n in ast.parse(path.read_text(encoding="utf-8")).body)]
    assert defining == ["bpe_encode"]
