"""The import graph only points down, folder by folder and, inside amips_plugin/, layer by layer.

Folders are the lowest layers and are read from the tree, not listed module by module (pyproject's
`package-dir` installs each under amips_plugin):

    core/          amips_plugin.core         errors, limits, files, ids, the manifest schema: imports nothing of ours
    adapters/      amips_plugin.adapters     the store layer (Edge, qdrant-client): imports core only
    compression/   amips_plugin.compression  the artifact container and the quantizers: imports core only
    amips_plugin/  amips_plugin              everything that uses them, in LAYERS below

So no two folders import each other. Inside amips_plugin/ each module is listed in LAYERS, lowest first;
one that is not listed fails the test. Read from the source with `ast`, lazy imports inside functions
included, so a cycle cannot hide.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"core": "amips_plugin.core", "adapters": "amips_plugin.adapters",
           "compression": "amips_plugin.compression", "amips_plugin": "amips_plugin"}  # as installed
FOLDER_IMPORTS = {"core": set(), "adapters": {"core"}, "compression": {"core"},
                  "amips_plugin": {"core", "adapters", "compression"}}  # which other folders each may import
LAYERS = [  # inside amips_plugin/, lowest first; a package name covers the modules under it
    ("base", ["amips_plugin", "amips_plugin.arrays", "amips_plugin.synthetic", "amips_plugin.fingerprint",
              "amips_plugin.truth", "amips_plugin.freshness", "amips_plugin.query_bounds",
              "amips_plugin.train_config"]),
    ("models", ["amips_plugin.models", "amips_plugin.losses", "amips_plugin.metrics", "amips_plugin.targets",
                "amips_plugin.data", "amips_plugin.inference", "amips_plugin.model_artifact"]),
    ("training", ["amips_plugin.training", "amips_plugin.routing", "amips_plugin.router_training"]),
    ("indexes", ["amips_plugin.model_registry", "amips_plugin.collection_ops", "amips_plugin.pq_store",
                 "amips_plugin.router_store", "amips_plugin.serving_policy", "amips_plugin.side_indexes",
                 "amips_plugin.pending_writes"]),
    ("query", ["amips_plugin.rewriting", "amips_plugin.tuning", "amips_plugin.calibration", "amips_plugin.advise",
               "amips_plugin.client", "amips_plugin.pq_build", "amips_plugin.route_build", "amips_plugin.search_run"]),
    ("cli", ["amips_plugin.cli"]),
]


def folder_of(module: str) -> str:
    """The folder a module lives in, from its installed name (the longest package-dir prefix)."""
    return max((folder for folder, package in FOLDERS.items() if module == package or module.startswith(package + ".")),
               key=lambda folder: len(FOLDERS[folder]))


def layer_of(module: str) -> int:
    """The rank of an amips_plugin/ module in LAYERS (AssertionError for one that is not listed)."""
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "amips_plugin" and module.startswith(name + ".")):
                return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (root / folder).rglob("*.py"):
            parts = path.relative_to(root / folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
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
    return {m for m in out if m.split(".")[0] in ("amips_plugin", *FOLDERS)}


def resolve(target: str, known: dict[str, Path]) -> str:
    """`pkg.module.name` → the longest known module prefix (`from x import y` may name a function)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def violations(known: dict[str, Path]) -> list[str]:
    """Every import that crosses into a folder its folder may not import, or up a layer inside amips_plugin/."""
    found = []
    for name, path in known.items():
        source = folder_of(name)
        for target in imports(name, path):
            if target.split(".")[0] in FOLDERS and target.split(".")[0] != "amips_plugin":
                found.append(f"{name} imports {target}: use its installed name, amips_plugin.{target}")
                continue
            target = resolve(target, known)
            folder = folder_of(target)
            if folder != source and folder not in FOLDER_IMPORTS[source]:
                found.append(f"{name} ({source}/) → {target} ({folder}/)")
            elif folder == source == "amips_plugin" and target != name and layer_of(target) > layer_of(name):
                found.append(f"{name} ({LAYERS[layer_of(name)][0]}) → {target} ({LAYERS[layer_of(target)][0]})")
    return sorted(set(found))


def test_imports_point_down_folder_by_folder_and_layer_by_layer():
    assert not violations(modules()), "\n".join(violations(modules()))


def test_the_folders_allowed_imports_have_no_cycle():
    order, left = [], dict(FOLDER_IMPORTS)
    while left:
        ready = [folder for folder, needs in left.items() if needs <= set(order)]
        assert ready, f"the folders {sorted(left)} import each other"
        order += ready
        left = {folder: needs for folder, needs in left.items() if folder not in ready}


def test_the_check_catches_an_upward_import_and_a_folder_cycle(tmp_path):
    """The checker above, run on a small tree that breaks each rule once, reports each break."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "amips_plugin" / "rewriting.py").write_text("")
    (tmp_path / "amips_plugin" / "arrays.py").write_text("from amips_plugin.rewriting import QueryRewriter\n")
    (tmp_path / "adapters" / "base.py").write_text("from amips_plugin.compression.artifact import pack\n")
    (tmp_path / "compression" / "artifact.py").write_text("from amips_plugin.adapters.base import VectorStore\n")
    (tmp_path / "core" / "errors.py").write_text("import amips_plugin.arrays\n")
    assert violations(modules(tmp_path)) == [
        "amips_plugin.adapters.base (adapters/) → amips_plugin.compression.artifact (compression/)",
        "amips_plugin.arrays (base) → amips_plugin.rewriting (query)",
        "amips_plugin.compression.artifact (compression/) → amips_plugin.adapters.base (adapters/)",
        "amips_plugin.core.errors (core/) → amips_plugin.arrays (amips_plugin/)"]


def test_a_module_missing_from_the_layers_is_reported():
    """A new module of amips_plugin/ must be placed: the package's own name covers only its __init__ (once,
    `amips_plugin` itself was a prefix, so an unlisted module silently became the lowest layer)."""
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("amips_plugin.brand_new")
    assert all(layer_of(name) >= 0 for name in modules() if folder_of(name) == "amips_plugin")


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
                         "amips_plugin.pending_writes", "amips_plugin.calibration")


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


def test_the_layout_table_names_every_module():
    """docs/reference.md's "Layout" is the one module-by-module table: a module it does not name fails here."""
    text = (ROOT / "docs" / "reference.md").read_text()
    table = text[text.index("## Layout"):]
    end = table.find("\n\n", table.index("| layer |"))
    table = table[: end if end >= 0 else len(table)]
    missing = [str(path.relative_to(ROOT)) for name, path in modules().items()
               if path.name != "__init__.py" and not re.search(rf"\b{path.stem}\b", table)]
    assert not missing, f"docs/reference.md's layout table does not name {missing}"
