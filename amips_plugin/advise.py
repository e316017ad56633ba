"""`amips advise`: which storage of the collection's vectors, and which serving policy on it, answers its
queries cheapest at a declared recall@1 (issue 23).

1. The collection's points (ids and vectors) are copied, once per candidate storage (adapters/storage.py:
   float32, int8, TurboQuant, binary), into a scratch Qdrant Edge store in a temporary folder: the same
   engine, HNSW parameters and ids as the collection, which itself is only read.
2. `tuning.tune` runs on each copy with the same query sample and seed, so every configuration is
   calibrated on the same held-out queries and stores its cheapest policy meeting the target (plain search
   at some hnsw_ef × oversampling, or two passes); a storage on which no setting reaches it says so.
3. Each configuration's policy, and the cheapest plain setting meeting the target on it, are then timed on
   the held-out queries in interleaved rounds (best of `repeats`), so machine noise hits all alike.
4. The recommended configuration is the fastest whose vector bytes per key in RAM (codes plus float32
   originals: `Quantization.ram_bytes_per_key`) fit `max_bytes_per_key`.

Scratch copies need disk for each storage in turn (they are built one after another and all removed at
the end) and time: ingest with HNSW, then tune (about a minute per storage for 20k–90k keys and 8,000
queries on 2 cores). Moving the collection itself to the recommended storage is not done here: create it
anew with `amips ingest --quantization NAME` (a server: `update_collection` with that quantization).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin.adapters.storage import DEFAULT_STORAGES, QUANTIZATIONS

from . import collections as collection_ops
from .core.errors import InputError
from .core.timing import best_times
from .serving_policy import serve
from .tuning import DEFAULT_REPEATS, TuneReport, check_sample_size, check_target, split_sample, tune

SCRATCH = "advise"  # the scratch collection's name


@dataclass
class Configuration:
    """One storage tried: its tuned policy (None: none reached the target, see `error`) and measured speed."""

    storage: str
    bytes_per_key: float
    report: TuneReport | None = None
    error: str | None = None
    qps: float | None = None  # the policy, interleaved rounds on the held-out queries
    plain_qps: float | None = None  # the cheapest plain setting meeting the target on this storage
    recommended: bool = False

    def to_dict(self) -> dict[str, Any]:
        chosen = self.report.chosen if self.report else None
        return {"storage": self.storage, "bytes_per_key": self.bytes_per_key,
                "recall@1": chosen.recall if chosen else None, "lower_bound": chosen.lower_bound if chosen else None,
                "queries_per_second": self.qps, "plain_queries_per_second": self.plain_qps,
                "policy": chosen.policy.describe() if chosen else None,
                "plain": self.report.plain.policy.describe() if self.report else None,
                "recommended": self.recommended, "error": self.error}


@dataclass
class Advice:
    target: float
    held_out: int
    max_bytes_per_key: float | None
    configurations: list[Configuration] = field(default_factory=list)

    @property
    def recommended(self) -> Configuration | None:
        return next((c for c in self.configurations if c.recommended), None)

    def to_dict(self) -> dict[str, Any]:
        best = self.recommended
        return {"target": self.target, "held_out": self.held_out, "max_bytes_per_key": self.max_bytes_per_key,
                "recommended": best.storage if best else None,
                "configurations": [c.to_dict() for c in self.configurations]}


def advise(store: VectorStore, collection: str, queries: np.ndarray, target: float,
           storages: tuple[str, ...] = DEFAULT_STORAGES, max_bytes_per_key: float | None = None, limit: int = 10,
           repeats: int = DEFAULT_REPEATS, scratch_root: str | None = None, seed: int = 0) -> Advice:
    """Tune every storage of `storages` on a scratch copy of the collection and recommend one (module docstring)."""
    from amips_plugin.adapters.edge_store import EdgeStore  # the scratch engine

    unknown = [name for name in storages if name not in QUANTIZATIONS]
    if unknown or not storages:
        raise InputError(f"unknown storage(s) {', '.join(unknown) or '(none given)'}; expected some of "
                         f"{', '.join(QUANTIZATIONS)}")
    check_target(target)
    check_sample_size(len(queries), target)  # before any copy is made
    keys, ids, _ = collection_ops.read_keys(store, collection)
    held = np.asarray(queries)[split_sample(len(queries), seed)[1]]  # tune's held-out part for this seed
    advice = Advice(target, len(held), max_bytes_per_key)
    scratches: list[EdgeStore] = []
    with tempfile.TemporaryDirectory(prefix="amips-advise-", dir=scratch_root) as folder:
        try:
            tasks: dict[tuple[str, str], Any] = {}
            for name in dict.fromkeys(storages):
                configuration = Configuration(name, QUANTIZATIONS[name].ram_bytes_per_key(keys.shape[1]))
                advice.configurations.append(configuration)
                scratch = EdgeStore(f"{folder}/{name}")
                scratches.append(scratch)
                collection_ops.ingest(scratch, SCRATCH, keys, ids=ids, quantization=name)
                try:
                    configuration.report = tune(scratch, SCRATCH, queries, target, limit, repeats=repeats, seed=seed)
                except InputError as exc:  # no setting reaches the target on this storage
                    configuration.error = str(exc)
                    continue
                for role, row in (("policy", configuration.report.chosen), ("plain", configuration.report.plain)):
                    tasks[(name, role)] = partial(serve, scratch, SCRATCH, held, limit, row.policy)
            seconds = best_times(tasks, repeats)
        finally:
            for scratch in scratches:
                scratch.close()
    for configuration in advice.configurations:
        if configuration.report is not None:
            configuration.qps = len(held) / seconds[(configuration.storage, "policy")]
            configuration.plain_qps = len(held) / seconds[(configuration.storage, "plain")]
    fitting = [c for c in advice.configurations if c.qps is not None
               and (max_bytes_per_key is None or c.bytes_per_key <= max_bytes_per_key)]
    if fitting:
        max(fitting, key=lambda c: c.qps or 0.0).recommended = True
    return advice


def format_advice(advice: Advice) -> str:
    """The frontier as a text table, the recommendation marked."""
    lines = [f"held-out queries: {advice.held_out}; target recall@1 ≥ {advice.target}"
             + ("" if advice.max_bytes_per_key is None else f"; at most {advice.max_bytes_per_key:g} bytes per key"),
             f"{'storage':<8} {'B/key':>7} {'recall@1':>9} {'q/s policy':>11} {'q/s plain':>10}  policy"]
    for c in advice.configurations:
        if c.report is None:
            lines.append(f"{c.storage:<8} {c.bytes_per_key:>7,.0f}  {'—':>8} {'—':>11} {'—':>10}  {c.error}")
            continue
        mark = " *" if c.recommended else ""
        lines.append(f"{c.storage + mark:<8} {c.bytes_per_key:>7,.0f} {c.report.chosen.recall:>9.4f} {c.qps or 0:>11,.0f} "
                     f"{c.plain_qps or 0:>10,.0f}  {c.report.chosen.policy.describe()}")
    best = advice.recommended
    lines.append(f"recommended: {best.storage} (create the collection with `amips ingest --quantization {best.storage}`)"
                 if best else "no storage reached the target within the budget")
    return "\n".join(lines)
