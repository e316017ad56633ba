"""The import graph only points down: each module imports from its own layer or lower ones.

Layers, lowest first (a module's layer is that of the longest prefix below that names it):
core (errors, limits, files, ids, arrays) → models (the networks, losses, metrics, schemas) → store
(the backends) → artifact (the container, quantization, PQ) → training (fit, routing) → indexes (the
registry, collection operations, side indexes, serving policies) → query path → CLI.
Read from the source with `ast`, lazy imports inside functions included, so a cycle cannot hide.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"amips_plugin": "amips_plugin", "adapters": "amips_plugin.adapters",
           "compression": "amips_plugin.compression"}  # as installed (pyproject's package-dir)
LAYERS = [
    ("core", ["amips_plugin", "amips_plugin.compression", "amips_plugin.core", "amips_plugin.adapters.point_ids",
              "amips_plugin.arrays",
              "amips_plugin.synthetic"]),
    ("models", ["amips_plugin.models", "amips_plugin.losses", "amips_plugin.metrics", "amips_plugin.targets",
                "amips_plugin.data", "amips_plugin.inference", "amips_plugin.manifest_schema"]),
    ("store", ["amips_plugin.adapters", "amips_plugin.fingerprint", "amips_plugin.freshness",
               "amips_plugin.query_bounds"]),
    ("artifact", ["amips_plugin.compression.artifact", "amips_plugin.compression.quantization",
                  "amips_plugin.compression.anisotropic_pq"]),
    ("training", ["amips_plugin.training", "amips_plugin.routing", "amips_plugin.router_training"]),
    ("indexes", ["amips_plugin.model_registry", "amips_plugin.collection_ops", "amips_plugin.compression.pq_store",
                 "amips_plugin.router_store", "amips_plugin.serving_policy", "amips_plugin.side_indexes",
                 "amips_plugin.pending_writes"]),
    ("query", ["amips_plugin.rewriting", "amips_plugin.tuning", "amips_plugin.advise", "amips_plugin.client",
               "amips_plugin.pq_build", "amips_plugin.route_build"]),
    ("cli", ["amips_plugin.cli"]),
]


PACKAGES = ("amips_plugin", "amips_plugin.compression")  # their __init__ is core; the name covers no other module


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (module.startswith(prefix + ".") and prefix not in PACKAGES)
            if covers and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} has no layer: add it to LAYERS"
    return rank


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The amips modules `name` imports (absolute and relative, at any depth in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return {m for m in out if m.split(".")[0] in ("amips_plugin", "adapters", "compression")}


def resolve(target: str, known: dict[str, Path]) -> str:
    """`pkg.module.name` → the longest known module prefix (`from x import y` may name a function)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_no_module_imports_from_a_higher_layer():
    known = modules()
    upward = set()
    for name, path in known.items():
        for target in imports(name, path):
            assert not target.startswith(("adapters", "compression")), \
                f"{name} imports {target}: use amips_plugin.adapters / amips_plugin.compression"
            target = resolve(target, known)
            if target != name and layer_of(target) > layer_of(name):
                upward.add(f"{name} ({LAYERS[layer_of(name)][0]}) → {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a core module importing the query path is reported."""
    fake = tmp_path / "amips_plugin" / "core" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from amips_plugin.rewriting import QueryRewriter\n")
    known = {"amips_plugin.core.bad": fake, "amips_plugin.rewriting": ROOT / "amips_plugin" / "rewriting.py"}
    edges = [resolve(t, known) for t in imports("amips_plugin.core.bad", fake)]
    assert any(layer_of(t) > layer_of("amips_plugin.core.bad") for t in edges)


def test_a_module_missing_from_the_layers_is_reported():
    """A new module must be placed: the package names cover only their own __init__ (once, `amips_plugin`
    itself was a core prefix, so an unlisted module silently became core and the check could not fire)."""
    import pytest

    for module in ("amips_plugin.brand_new", "amips_plugin.compression.brand_new"):
        with pytest.raises(AssertionError, match="has no layer"):
            layer_of(module)
    assert all(layer_of(name) >= 0 for name in modules())


def test_a_named_vectors_view_forwards_every_method_a_backend_overrides():
    """`VectorView` inherits the base class's defaults silently: once it had no `manifest_token` (so a named
    vector's manifests were read again on every query) and no `free_bytes` (so its writes skipped the
    free-space check). Whatever a backend implements, the view must pass on."""
    import inspect

    from amips_plugin.adapters.base import VectorStore
    from amips_plugin.adapters.edge_store import EdgeStore
    from amips_plugin.adapters.qdrant_client_store import QdrantClientStore
    from amips_plugin.adapters.vector_view import VectorView

    inherited = {name for name, _ in inspect.getmembers(VectorStore, predicate=inspect.isfunction)
                 if not name.startswith("_") and name not in VectorView.__dict__
                 and any(name in backend.__dict__ for backend in (EdgeStore, QdrantClientStore))}
    assert not inherited, f"VectorView does not forward {sorted(inherited)}"


def test_every_side_index_has_a_manifest_slot_and_is_a_candidate_source():
    """Slots, candidate sources and drop-index names all come from one registry."""
    from amips_plugin.adapters.base import MANIFEST_SLOTS
    from amips_plugin.cli import main
    from amips_plugin.rewriting import CANDIDATE_SOURCES
    from amips_plugin.side_indexes import BY_SLOT, SIDE_INDEXES

    assert set(BY_SLOT) <= set(MANIFEST_SLOTS) and len(BY_SLOT) == len(SIDE_INDEXES)
    assert CANDIDATE_SOURCES == ("engine", *SIDE_INDEXES)
    drop_index = main.commands["drop-index"].params[1]
    assert sorted(drop_index.type.choices) == sorted(SIDE_INDEXES)


TRAINING_AND_BUILDING = ("amips_plugin.training", "amips_plugin.losses", "amips_plugin.data",
                         "amips_plugin.collection_ops", "amips_plugin.tuning", "amips_plugin.advise",
                         "amips_plugin.router_training", "amips_plugin.pq_build", "amips_plugin.route_build",
                         "amips_plugin.pending_writes")


def test_the_query_path_imports_no_training_or_building_code():
    """Serving a query (AmipsClient, the QueryRewriter) loads models and side indexes, never the code that trains
    or builds them (issue 25: rewriting → side_indexes → router_store → collections (now collection_ops) →
    training, and the client imported training for TrainConfig)."""
    import subprocess
    import sys

    probe = ("import sys, amips_plugin.client, amips_plugin.rewriting; "
             "print(','.join(sorted(m for m in sys.modules if m.startswith('amips_plugin'))))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip().split(","))
    assert "amips_plugin.rewriting" in loaded and "amips_plugin.side_indexes" in loaded  # the probe ran
    assert not loaded & set(TRAINING_AND_BUILDING), sorted(loaded & set(TRAINING_AND_BUILDING))
