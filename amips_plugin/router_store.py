"""The routed list index: a trained point router kept alongside the collection, as a candidate stage.

`amips route-build` splits the collection's keys into c coarse × s fine lists
(`routing.TwoLevelPartition`), trains a `routing.PointRouter` on a query sample, and publishes it
like the model (blob first, then the manifest in the "router" slot) in the same checksummed
container, kind "amips-router": coarse centroids, the fine lists' points, biases and key centroids
(fp32), and each point id's fine list (int64). A search with `--candidates-from route` ranks the
fine lists of the M coarse lists nearest to the probe, takes the keys of the best `candidates`
fine lists, and rescores them exactly with x (IVF search with a learned list ranking; measured
against plain IVF in bench/search_cost.py). Appending keys marks it stale, since new keys belong
to no list; searches then use the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from amips_plugin.core import point_ids
from amips_plugin.adapters.base import VectorStore
from amips_plugin.compression.artifact import pack, unpack
from amips_plugin.compression.quantization import encode_exact

from . import model_registry
from .core.errors import ArtifactError
from .core.manifest_schema import BlobManifestSchema

if TYPE_CHECKING:  # torch (routing also trains the router): imported only where a router is read
    from .routing import ListRanker

KIND = "amips-router"
SLOT = "router"
DESCRIPTION = "routed list index"  # how searches and `status` name it
BUILD_COMMAND = "route-build"


@dataclass(frozen=True)
class RoutedLists:
    """A frozen router over the collection's point ids, grouped by fine list."""

    ranker: ListRanker
    ids: np.ndarray  # (N,) point ids (int64 or text, `core.point_ids`), sorted by fine list
    bounds: np.ndarray  # (c·s + 1,) fine list f holds ids[bounds[f]:bounds[f + 1]]
    coarse_candidates: int

    @classmethod
    def from_assignment(cls, ranker: ListRanker, ids: np.ndarray, assignment: np.ndarray,
                        coarse_candidates: int) -> RoutedLists:
        order = np.argsort(assignment, kind="stable")
        sizes = np.bincount(assignment, minlength=len(ranker.points))
        return cls(ranker, ids[order], np.concatenate([[0], np.cumsum(sizes)]), coarse_candidates)

    @property
    def dim(self) -> int:
        """The dimension of the keys it routes."""
        return self.ranker.coarse.shape[1]

    def candidates(self, probes: np.ndarray, lists: int) -> list[np.ndarray]:
        """Point ids of the best `lists` fine lists, per probe row (their counts differ by list size)."""
        ranked = self.ranker.rank(probes, self.coarse_candidates).lists[:, :lists]
        return [np.concatenate([self.ids[self.bounds[f]:self.bounds[f + 1]] for f in row]) for row in ranked]


def encode_routed_lists(routed: RoutedLists, metadata: dict[str, Any]) -> bytes:
    r = routed.ranker
    assignment = np.repeat(np.arange(len(r.points), dtype=np.int64), np.diff(routed.bounds))
    tensors = [(name, encode_exact(np.ascontiguousarray(array)))
               for name, array in (("coarse", r.coarse), ("points", r.points), ("bias", r.bias),
                                   ("anchor", r.anchor), point_ids.encode_for_artifact(routed.ids),
                                   ("assignment", assignment))]
    header = {"metadata": metadata, "logit_scale": r.logit_scale, "min_confidence": r.min_confidence,
              "sublists": r.sublists, "coarse_candidates": routed.coarse_candidates}
    return pack(KIND, header, tensors)


def decode_routed_lists(blob: bytes) -> RoutedLists:
    from .routing import ListRanker  # torch (routing trains the router too): only where a router is read

    header, tensors = unpack(blob, KIND)
    try:
        coarse, points, bias, anchor = (tensors[n].astype(np.float32) for n in ("coarse", "points", "bias", "anchor"))
        ids, assignment = point_ids.decode_from_artifact(tensors), tensors["assignment"]
        ranker = ListRanker(coarse=coarse, points=points, bias=bias, anchor=anchor,
                            logit_scale=float(header["logit_scale"]), sublists=int(header["sublists"]),
                            min_confidence=float(header["min_confidence"]))
        coarse_candidates = int(header["coarse_candidates"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"routed list index lacks or garbles {exc}") from None
    lists = len(coarse) * ranker.sublists
    lists_in_range = not len(assignment) or 0 <= assignment.min() <= assignment.max() < lists
    if (points.shape != (lists, coarse.shape[1]) or anchor.shape != points.shape or bias.shape != (lists,)
            or ids.shape != assignment.shape or not lists_in_range or np.any(np.diff(assignment) < 0)
            or coarse_candidates < 1 or coarse.ndim != 2 or 0 in coarse.shape or not len(ids)
            or not point_ids.all_valid(ids)):
        raise ArtifactError("routed list index's lists, points and ids do not fit together")
    return RoutedLists.from_assignment(ranker, ids, assignment, coarse_candidates)


def load(store: VectorStore, collection: str) -> tuple[RoutedLists, BlobManifestSchema] | None:
    return model_registry.load_side_index(store, collection, SLOT, decode_routed_lists, DESCRIPTION)
