"""The package's shape: layers that import only layers below them, no import cycle, and one model
interface. Read from the source with `ast`, so a function-local import counts like any other."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jft"

# The layers, lowest first: a module may import its own layer and those below it. A name ending
# in "." holds every module under it.
LAYERS = {
    "core": ("jft", "jft.errors", "jft.files", "jft.outputs", "jft.params", "jft.config", "jft.plots", "jft.xla_cache"),
    "models": ("jft.models", "jft.models."),
    "data": ("jft.data", "jft.data."),
    "defaults": ("jft.defaults",),
    "train": ("jft.train", "jft.train."),
    "tasks": ("jft.tasks", "jft.tasks."),
    "perf": ("jft.perf", "jft.perf."),
    "stages": (
        "jft.pretrain",
        "jft.finetune",
        "jft.population",
        "jft.sweep",
        "jft.quickstart",
        "jft.export",
        "jft.generate",
    ),
    "cli": ("jft.cli",),
}
# Only the command line imports inside functions: a command loads what it runs (a stage pulls in
# jax, seconds), so `jft --help` and `jft config` answer at once.
LAZY_IMPORTS_ALLOWED = {"jft.cli"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _layer(module: str) -> int:
    for index, members in enumerate(LAYERS.values()):
        if module in members or any(m.endswith(".") and module.startswith(m) for m in members):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: give it one")


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported jft module, whether inside a function) for every import of a module."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            # `from X import Y` imports the module X.Y when there is one, else names of X
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.append((target, id(node) in in_function))
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    return components


def test_every_module_has_a_layer_and_no_import_goes_up():
    upward = [
        f"{module} ({list(LAYERS)[_layer(module)]}) imports {target} ({list(LAYERS)[_layer(target)]})"
        for module, imports in GRAPH.items()
        for target, _ in imports
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    assert _cycles() == []


def test_no_function_imports_a_module_of_jft_but_the_command_line():
    lazy = [
        f"{module} imports {target} in a function"
        for module, imports in GRAPH.items()
        if module not in LAZY_IMPORTS_ALLOWED
        for target, inside in imports
        if inside
    ]
    assert lazy == []


def test_nothing_outside_the_models_names_a_family_of_its_own():
    """Stages, steps, the run directory, export, bench and the TPU compile speak to the model
    interface (jft.models.Family), never to BERT's classes."""
    named = [
        f"{module} names {word}"
        for module, path in MODULES.items()
        if not module.startswith("jft.models")
        for word in ("BertConfig", "BertFor", "BertModel", "jft.models.bert")
        if word in path.read_text()
    ]
    assert named == []


@pytest.mark.parametrize("module", ["jft.models", "jft.train.steps", "jft.finetune"])
def test_the_reader_finds_the_imports_it_should(module):
    """The test reads imports right: a few edges known to exist are found."""
    expected = {
        "jft.models": "jft.models.registry",
        "jft.train.steps": "jft.train.parallel",
        "jft.finetune": "jft.train.session",
    }[module]
    assert expected in {target for target, _ in GRAPH[module]}
