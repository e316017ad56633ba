"""A cheap look at an Edge shard's files before the engine opens them (issue 22.5).

Qdrant Edge opens a segment whose vector file (`vector_storage[-NAME]/matrix.dat`, an immutable
segment's dense rows, float32 or the vector's `datatype`, after a 4-byte header) was truncated — a full
disk, a bad copy — by extending it with zeros: searches then answer from the rows that survived, and
nothing says so (recall@1 0.34 on a 3,000-point collection cut to a third). Each such file must hold one row per
internal id of its segment (`id_tracker.versions`: 8 bytes an id), with the vector size its
`segment.json` states. This checks the sizes only (no read of the data), and only where it recognises
the layout: a segment laid out otherwise is left to the engine.
"""
from __future__ import annotations

import json
from pathlib import Path

MATRIX_HEADER_BYTES = 4
VERSION_BYTES = 8  # id_tracker.versions: one u64 per internal id
ELEMENT_BYTES = {None: 4, "float32": 4, "float16": 2, "uint8": 1}  # per coordinate, by the vector's datatype


def damaged_vector_files(shard_dir: Path) -> list[str]:
    """One line per vector file shorter than its segment's point count needs (empty: none found)."""
    problems = []
    for segment in sorted((shard_dir / "segments").glob("*/")):
        ids, config = segment / "id_tracker.versions", segment / "segment.json"
        if not ids.is_file() or not config.is_file():
            continue
        try:
            vectors = json.loads(config.read_text())["config"]["vector_data"]
            rows = ids.stat().st_size // VERSION_BYTES
            row_bytes = {name: int(spec["size"]) * ELEMENT_BYTES[spec.get("datatype")]
                         for name, spec in vectors.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a datatype it does not know included
            continue  # not a layout this check knows
        for name, size in row_bytes.items():
            matrix = segment / (f"vector_storage-{name}" if name else "vector_storage") / "matrix.dat"
            if not matrix.is_file():
                continue
            needed = MATRIX_HEADER_BYTES + rows * size
            held = matrix.stat().st_size
            if held < needed:
                problems.append(f"{matrix.relative_to(shard_dir)} holds "
                                f"{max(0, held - MATRIX_HEADER_BYTES) // size:,}"
                                f" of its {rows:,} vectors ({held:,} of {needed:,} bytes)")
    return problems
