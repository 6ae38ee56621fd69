"""The package's plan holds (docs/architecture.md): each module imports only its own layer and
the layers below it, and no modules import each other in a circle.

Layers, bottom to top: ``common``; ``store``, ``settings`` and ``environment``; ``events``;
``request``; ``engine``; ``core``; ``api``; ``plugin``. Imports for annotations only (under
``if TYPE_CHECKING:``) count too: the plan is the same for a reader."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "vllm_responses"
LAYERS = {
    "vllm_responses": 0,  # the package's face: __version__
    "common": 1,
    "store": 2, "settings": 2, "environment": 2,
    "events": 3,
    "request": 4,
    "engine": 5,
    "core": 6,
    "api": 7,
    "plugin": 8,
    "demo_model": 1,  # the demo model builder: apart
}


def modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PKG.rglob("*.py")
    }


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else parts[0]]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports at run time (a name imported from a
    package counts as its submodule when there is one)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "vllm_responses" or target.startswith("vllm_responses."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vllm_responses"):
                    found.add(alias.name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {module}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {t for t in imports(m, p, known) if t in known} for m, p in mods.items()}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in graph().items()
        for t in targets
        if layer(t) > layer(m)
    )
    assert upward == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    edges = graph()
    # Tarjan's strongly connected components: a component of two modules or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
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
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert circles == []


def test_every_module_has_a_layer() -> None:
    for m in modules():
        layer(m)  # a KeyError names a folder the plan does not know


def test_the_checks_see_what_they_should() -> None:
    """The graph is read right: known imports (a relative one, a lazy one inside a function) are there."""
    edges = graph()
    assert "vllm_responses.core.history" in edges["vllm_responses.core.service"]
    assert "vllm_responses.store.base" in edges["vllm_responses.core.history"]
    assert "vllm_responses.engine.vllm_engine" in edges["vllm_responses.plugin"]  # imported in init_state


def test_source_lines_are_at_most_120_characters() -> None:
    """Except the demo model's chat template (its lines are the template's text, whitespace and all)."""
    template = PKG / "demo_model" / "template.py"
    long = [
        f"{p.relative_to(SRC)}:{i}"
        for p in PKG.rglob("*.py")
        if p != template
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if len(line) > 120
    ]
    assert long == []
