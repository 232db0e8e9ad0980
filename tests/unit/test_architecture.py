"""The dependency rule, enforced: which part of the code may import which (README, "Architecture").

Every module of ``streams``, ``models`` and ``export`` belongs to one layer, and every import of
ours, at module level or inside a function, must go to a layer the importer may read. A new
module that no layer names fails here until it is given one. Cycles between modules are refused.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "models", "export")

# layer -> module name prefixes (a prefix ending in "." is a package: all modules below it)
LAYERS: dict[str, tuple[str, ...]] = {
    "contract": ("streams.schemas", "streams.settings", "streams.features", "streams.version"),
    "core": ("streams.state", "streams.privacy", "streams.experiment", "streams.pricing", "streams.catalog",
             "streams.scoring", "streams.pipeline", "streams.public_csv", "export.bundle"),
    "kafka": ("streams.topics", "streams.kafka_config"),
    "worker": ("streams.app", "streams.faust_compat", "streams.metrics", "streams.health", "streams.logs",
               "streams.runtime", "streams.__main__",
               "streams"),
    "tools": ("streams.tools.", "streams.tools"),
    "training": ("models.dataset", "models.user_model", "models.price_model", "models.recommend", "models.choice",
                 "models.uniform",
                 "models.plots", "models.train", "models.offpolicy", "models.elasticity", "models.events_csv",
                 "models.__main__", "models", "export.convert", "export.__main__",
                 "export"),
    "lab": ("models.lab.", "models.lab"),
}
# what each layer may import (besides itself)
MAY_IMPORT: dict[str, set[str]] = {
    "contract": set(),
    "core": {"contract"},
    "kafka": {"contract"},
    "worker": {"contract", "core", "kafka"},
    "tools": {"contract", "core", "kafka"},
    "training": {"contract", "core"},
    "lab": {"contract", "core", "kafka", "worker", "tools", "training"},
}
# the documented exceptions: training reads simulated histories and judges itself against their truth
EXCEPTIONS = {("training", "models.lab.simulator"), ("training", "models.lab.policy_eval")}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if module == p or (p.endswith(".") and module.startswith(p)):
                if best is None or len(p) > best[0]:
                    best = (len(p), layer)
    return best[1] if best else None


def our_imports(path: Path, module: str) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (module level or in functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" imports a module when pkg.mod is one
            names = [f"{base}.{a.name}" if (ROOT / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").exists()
                     or (ROOT / Path(*f"{base}.{a.name}".split(".")) / "__init__.py").exists() else base
                     for a in node.names]
        out.update(n for n in names if n.split(".")[0] in PACKAGES)
    out.discard(module)
    return out


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): our_imports(p, module_name(p))
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


GRAPH = all_modules()


def test_every_module_has_a_layer() -> None:
    assert len(GRAPH) > 30
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"modules with no layer (add them to LAYERS and to the README's Architecture): {missing}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_follow_the_dependency_rule(module: str) -> None:
    mine = layer_of(module)
    assert mine is not None
    bad = []
    for target in sorted(GRAPH[module]):
        theirs = layer_of(target)
        if theirs == mine or theirs in MAY_IMPORT[mine] or (mine, target) in EXCEPTIONS:
            continue
        bad.append(f"{target} ({theirs})")
    assert not bad, f"{module} ({mine}) may not import: {', '.join(bad)}"


def test_no_import_cycles() -> None:
    # Tarjan-free: a DFS that reports the first back edge's cycle
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if t not in GRAPH:
                continue
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    # a package's __init__ re-exporting its own modules is not a cycle of meaning
    cycles = [c for c in cycles if not any(c[k + 1].startswith(c[k] + ".") for k in range(len(c) - 1))]
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    # the checker itself: a worker module importing a tool is refused, a tool importing the worker core is fine
    assert layer_of("streams.tools.replay") == "tools" and layer_of("streams.pipeline") == "core"
    assert "tools" not in MAY_IMPORT["worker"] and "training" not in MAY_IMPORT["tools"]
    fake = ROOT / "streams" / "pipeline.py"
    graph = our_imports(fake, "streams.pipeline")
    assert "streams.pricing" in graph and all(layer_of(t) in {"contract", "core"} for t in graph)
