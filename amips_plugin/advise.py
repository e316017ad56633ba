"""`amips advise`: which storage of the collection's vectors, and which serving policy on it, answers its
queries cheapest at a declared recall@1 (issue 23).

0. The collection as it is comes first ("as is"): tuned where it stands, nothing stored, so that every
   other configuration is read against what the user has now (a shard made with Qdrant's defaults below
   10 MB of vectors holds no HNSW index and scores every vector: `tune` says so).
1. The collection's points (ids and vectors) are copied, once per candidate storage (adapters/storage.py:
   float32, int8, TurboQuant, binary), into a scratch Qdrant Edge store in a temporary folder: the same
   engine and ids as the collection, HNSW-indexed with amips' parameters; the collection itself is only read.
2. `tuning.tune` runs on each copy with the same query sample and seed, so every configuration is
   calibrated on the same held-out queries and stores its cheapest policy meeting the target (plain search
   at some hnsw_ef × oversampling, or two passes); a storage on which no setting reaches it says so.
3. Each configuration's policy, and the cheapest plain setting meeting the target on it, are then timed on
   the held-out queries in interleaved rounds (best of `repeats`), so machine noise hits all alike.
4. The recommended configuration is the fastest whose vector bytes per key in RAM (codes plus float32
   originals unless they are on disk: `Quantization.ram_bytes_per_key`) fit `max_bytes_per_key`. Beside
   that count, each configuration reports what was measured: how much this process's resident memory
   grew while its copy was built, loaded and tuned (`resident_bytes`; rough — memory freed by an earlier
   step is reused by a later one, and the page cache holding on-disk originals is not the process's). A
   configuration is a storage name, or NAME+disk for its originals kept on disk (rescoring reads them;
   while the page cache holds them, as on a machine with memory to spare, they cost no disk reads). Under
   a budget, the +disk variant of every quantized storage whose codes fit but whose originals do not is
   tried too.
5. `apply` moves the collection to the recommended configuration (`VectorStore.change_storage`: on Edge a
   new shard built beside the old, checked point by point and swapped in atomically; on a server
   `update_collection`) and tunes it there, storing its policy.

Scratch copies need disk for each storage in turn (all removed at the end) and time: ingest with HNSW,
then tune (about a minute per storage for 20k–90k keys and 8,000 queries on 2 cores).
"""
from __future__ import annotations

import gc
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin.adapters.storage import DEFAULT_STORAGES, QUANTIZATIONS, label

from . import collection_ops
from .core.errors import InputError
from .core.timing import best_times
from .serving_policy import serve
from .tuning import DEFAULT_REPEATS, TuneReport, check_sample_size, check_target, split_sample, tune

SCRATCH = "advise"  # the scratch collection's name
AS_IS = "as is"  # the configuration that is the collection itself
ON_DISK = "+disk"  # a configuration's suffix: its float32 originals on disk


def resident_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm), after a garbage collection; None elsewhere."""
    gc.collect()
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def parse_configuration(name: str) -> tuple[str, bool]:
    """"int8" → ("int8", False); "int8+disk" → ("int8", True); "float32" is "none". InputError for an unknown
    storage."""
    storage, on_disk = (name[:-len(ON_DISK)], True) if name.endswith(ON_DISK) else (name, False)
    storage = "none" if storage == "float32" else storage
    if storage not in QUANTIZATIONS:
        raise InputError(f"unknown storage {name!r}; expected one of {', '.join(QUANTIZATIONS)}, each optionally "
                         f"with {ON_DISK} (originals on disk)")
    return storage, on_disk


def with_disk_variants(names: tuple[str, ...], dim: int, max_bytes_per_key: float | None) -> tuple[str, ...]:
    """`names`, plus NAME+disk for each quantized storage whose codes fit the budget but not with its originals."""
    if max_bytes_per_key is None:
        return names
    extra = [f"{n}{ON_DISK}" for n in names if not n.endswith(ON_DISK) and QUANTIZATIONS[n].quantized
             and QUANTIZATIONS[n].ram_bytes_per_key(dim) > max_bytes_per_key
             >= QUANTIZATIONS[n].ram_bytes_per_key(dim, on_disk=True)]
    return tuple(dict.fromkeys((*names, *extra)))


@dataclass
class Configuration:
    """One storage tried: its tuned policy (None: none reached the target, see `error`) and measured speed."""

    storage: str  # adapters/storage.py's name
    bytes_per_key: float
    on_disk: bool = False
    report: TuneReport | None = None
    error: str | None = None
    qps: float | None = None  # the policy, interleaved rounds on the held-out queries
    plain_qps: float | None = None  # the cheapest plain setting meeting the target on this storage
    rss_growth: int | None = None  # bytes the process's resident memory grew while this copy was built and tuned
    recommended: bool = False
    as_is: bool = False  # the collection itself, not a scratch copy

    @property
    def name(self) -> str:
        """As --configs names it: "none", "int8", "int8+disk"; the collection itself is "as is"."""
        return AS_IS if self.as_is else self.storage + (ON_DISK if self.on_disk else "")

    @property
    def public_name(self) -> str:
        """The storage as the JSON reports it: "float32" for none."""
        return "float32" if self.storage == "none" else self.storage

    def to_dict(self) -> dict[str, Any]:
        chosen = self.report.chosen if self.report else None
        return {"storage": self.public_name, "on_disk": self.on_disk, "configuration": self.name, "as_is": self.as_is,
                "bytes_per_key": self.bytes_per_key,
                "recall@1": chosen.recall if chosen else None, "lower_bound": chosen.lower_bound if chosen else None,
                "queries_per_second": self.qps, "plain_queries_per_second": self.plain_qps,
                "policy": chosen.policy.describe() if chosen else None,
                "plain": self.report.plain.policy.describe() if self.report else None,
                "rss_growth_bytes": self.rss_growth, "recommended": self.recommended, "error": self.error}


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
                "recommended": best.public_name if best else None,
                "configurations": [c.to_dict() for c in self.configurations]}


def advise(store: VectorStore, collection: str, queries: np.ndarray, target: float,
           storages: tuple[str, ...] = DEFAULT_STORAGES, max_bytes_per_key: float | None = None, limit: int = 10,
           repeats: int = DEFAULT_REPEATS, scratch_root: str | None = None, seed: int = 0,
           progress: Callable[[str], None] | None = None) -> Advice:
    """Tune every configuration of `storages` on a scratch copy of the collection and recommend one (module
    docstring); `progress` is told each step."""
    from amips_plugin.adapters.edge_store import EdgeStore  # the scratch engine

    say = progress or (lambda message: None)
    if not storages:
        raise InputError(f"no storage given; expected some of {', '.join(QUANTIZATIONS)}")
    for name in storages:
        parse_configuration(name)
    check_target(target)
    check_sample_size(len(queries), target)  # before any copy is made
    keys, ids, _ = collection_ops.read_keys(store, collection)
    held = np.asarray(queries)[split_sample(len(queries), seed).held]  # tune's held-out part for this seed
    advice = Advice(target, len(held), max_bytes_per_key)
    scratches: list[EdgeStore] = []
    names = with_disk_variants(tuple(dict.fromkeys(storages)), keys.shape[1], max_bytes_per_key)
    tasks: dict[tuple[str, str], Any] = {}
    stored, on_disk_now = store.storage(collection) or ("none", False)
    as_is = Configuration(stored, QUANTIZATIONS[stored].ram_bytes_per_key(keys.shape[1], on_disk_now), on_disk_now,
                          as_is=True)
    advice.configurations.append(as_is)
    say(f"[0/{len(names)}] {collection} as it is ({label(stored, on_disk_now)}): tuning, nothing stored")
    try:
        as_is.report = tune(store, collection, queries, target, limit, repeats=repeats, seed=seed, publish=False)
    except InputError as exc:
        as_is.error = str(exc)
    else:
        for role, row in (("policy", as_is.report.chosen), ("plain", as_is.report.plain)):
            tasks[(AS_IS, role)] = partial(serve, store, collection, held, limit, row.policy)
    with tempfile.TemporaryDirectory(prefix="amips-advise-", dir=scratch_root) as folder:
        try:
            for step, name in enumerate(names, 1):
                storage, on_disk = parse_configuration(name)
                configuration = Configuration(storage, QUANTIZATIONS[storage].ram_bytes_per_key(keys.shape[1], on_disk),
                                              on_disk)
                advice.configurations.append(configuration)
                say(f"[{step}/{len(names)}] {label(storage, on_disk)}: copying {len(keys):,} keys, then tuning")
                before = resident_bytes()
                scratch = EdgeStore(f"{folder}/{len(scratches)}")
                scratches.append(scratch)
                collection_ops.ingest(scratch, SCRATCH, keys, ids=ids, quantization=storage, on_disk=on_disk)
                try:
                    configuration.report = tune(scratch, SCRATCH, queries, target, limit, repeats=repeats, seed=seed)
                except InputError as exc:  # no setting reaches the target on this storage
                    configuration.error = str(exc)
                    continue
                finally:
                    after = resident_bytes()
                    configuration.rss_growth = None if before is None or after is None else max(0, after - before)
                for role, row in (("policy", configuration.report.chosen), ("plain", configuration.report.plain)):
                    tasks[(name, role)] = partial(serve, scratch, SCRATCH, held, limit, row.policy)
            say(f"timing {len(tasks)} settings in {repeats} interleaved rounds")
            seconds = best_times(tasks, repeats)
        finally:
            for scratch in scratches:
                scratch.close()
    for configuration in advice.configurations:
        if configuration.report is not None:
            configuration.qps = len(held) / seconds[(configuration.name, "policy")]
            configuration.plain_qps = len(held) / seconds[(configuration.name, "plain")]
    fitting = [c for c in advice.configurations if c.qps is not None
               and (max_bytes_per_key is None or c.bytes_per_key <= max_bytes_per_key)]
    if fitting:
        max(fitting, key=lambda c: c.qps or 0.0).recommended = True
    return advice


def apply(store: VectorStore, collection: str, advice: Advice, queries: np.ndarray, limit: int = 10,
          repeats: int = DEFAULT_REPEATS, seed: int = 0,
          progress: Callable[[int], None] | None = None) -> tuple[str, TuneReport]:
    """Move the collection to the recommended configuration (nothing lost: `VectorStore.change_storage`) and
    tune it there, storing its policy; (what the move did, the tune report). InputError without a recommendation."""
    best = advice.recommended
    if best is None:
        raise InputError("no configuration met the target within the budget: nothing to apply")
    moved = (f"{collection!r} stays as it is: no configuration tried was faster" if best.as_is else
             store.change_storage(collection, best.storage, best.on_disk, progress=progress))
    return moved, tune(store, collection, queries, advice.target, limit, repeats=repeats, seed=seed)


def format_advice(advice: Advice) -> str:
    """The frontier as a text table, the recommendation marked."""
    lines = [f"held-out queries: {advice.held_out}; target recall@1 ≥ {advice.target}"
             + ("" if advice.max_bytes_per_key is None else f"; at most {advice.max_bytes_per_key:g} bytes per key"),
             f"{'storage':<11} {'B/key':>7} {'RSS +MiB':>9} {'recall@1':>9} {'q/s policy':>11} {'q/s plain':>10}"
             "  policy"]
    for c in advice.configurations:
        if c.report is None:
            lines.append(f"{c.name:<11} {c.bytes_per_key:>7,.0f} {_mib(c.rss_growth):>9}  {'—':>8} {'—':>11} "
                         f"{'—':>10}  {c.error}")
            continue
        mark = " *" if c.recommended else ""
        lines.append(f"{c.name + mark:<11} {c.bytes_per_key:>7,.0f} {_mib(c.rss_growth):>9} "
                     f"{c.report.chosen.recall:>9.4f} {c.qps or 0:>11,.0f} {c.plain_qps or 0:>10,.0f}  "
                     f"{c.report.chosen.policy.describe()}")
    best = advice.recommended
    if best is None:
        lines.append("no storage reached the target within the budget")
    elif best.as_is:
        lines.append("recommended: the collection as it is (`amips tune` stores its policy)")
    else:
        lines.append(f"recommended: {label(best.storage, best.on_disk)} (`amips advise ... --apply` moves the "
                     "collection to it and tunes it there)")
    return "\n".join(lines)


def _mib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:,.1f}"
