"""qdrant-client filters (`models.Filter`) as Qdrant Edge filters, so one filter serves every store.

The two libraries spell the same Qdrant filter language in different classes. Converted: nested
must / should / must_not / min_should, field conditions (match value / any / except / text / phrase /
prefix / substring, numeric ranges, values count, is_empty / is_null), has-id, is-empty and is-null
conditions. Anything else (geo, datetime ranges, nested-object conditions) is an InputError naming it,
never silently dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import qdrant_edge as edge
from qdrant_client import models

from amips_plugin.core.errors import InputError

from amips_plugin.core import point_ids

_MATCHES: dict[type, Callable[[Any], Any]]  # qdrant-client match class -> its Qdrant Edge conversion
_MATCHES = {models.MatchValue: lambda m: edge.MatchValue(m.value), models.MatchAny: lambda m: edge.MatchAny(m.any),
            models.MatchExcept: lambda m: edge.MatchExcept(m.except_),
            models.MatchText: lambda m: edge.MatchText(m.text),
            models.MatchPhrase: lambda m: edge.MatchPhrase(m.phrase),
            models.MatchPrefix: lambda m: edge.MatchPrefix(m.prefix),
            models.MatchSubstring: lambda m: edge.MatchSubstring(m.substring)}


def edge_filter(flt: models.Filter | None) -> edge.Filter | None:
    if flt is None:
        return None
    if not isinstance(flt, models.Filter):
        raise InputError(f"expected a qdrant_client.models.Filter, got {type(flt).__name__}")

    @overload
    def many(conditions: None) -> None: ...
    @overload
    def many(conditions: Any) -> list[Any]: ...

    def many(conditions: Any) -> list[Any] | None:
        if conditions is None:
            return None
        return [_condition(c) for c in (conditions if isinstance(conditions, list) else [conditions])]

    min_should = None if flt.min_should is None else edge.MinShould(many(flt.min_should.conditions),
                                                                    flt.min_should.min_count)
    return edge.Filter(must=many(flt.must), should=many(flt.should), must_not=many(flt.must_not),
                       min_should=min_should)


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.Filter):
        return edge_filter(condition)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition({point_ids.canonical(i) for i in condition.has_id})
    if isinstance(condition, models.IsEmptyCondition):
        return edge.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return edge.IsNullCondition(condition.is_null.key)
    if isinstance(condition, models.FieldCondition):
        return _field(condition)
    raise InputError(f"filter condition {type(condition).__name__} is not supported on Qdrant Edge by amips")


def _field(c: models.FieldCondition) -> edge.FieldCondition:
    unsupported = [name for name in ("geo_bounding_box", "geo_radius", "geo_polygon") if getattr(c, name) is not None]
    if unsupported:
        raise InputError(f"filter on {c.key!r}: {unsupported[0]} is not supported on Qdrant Edge by amips")
    match = None
    if c.match is not None:
        convert = _MATCHES.get(type(c.match))
        if convert is None:
            raise InputError(f"filter on {c.key!r}: {type(c.match).__name__} is not supported on Qdrant Edge by amips")
        match = convert(c.match)
    range_ = None
    if c.range is not None:
        if not isinstance(c.range, models.Range):
            raise InputError(f"filter on {c.key!r}: only numeric ranges are supported on Qdrant Edge by amips")
        range_ = edge.RangeFloat(lt=c.range.lt, gt=c.range.gt, gte=c.range.gte, lte=c.range.lte)
    values_count = None if c.values_count is None else edge.ValuesCount(
        lt=c.values_count.lt, gt=c.values_count.gt, gte=c.values_count.gte, lte=c.values_count.lte)
    return edge.FieldCondition(c.key, match=match, range=range_, values_count=values_count,
                               is_empty=c.is_empty, is_null=c.is_null)
