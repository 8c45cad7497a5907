"""Conservation, checked over what a store holds: every record one fate, every fate its decision.

A store (PostgreSQL or Parquet) is read into three compact Arrow tables, the
same shape from either (`sinks.stores.Tables`, from a store's `compact()`), so
one set of vectorised checks serves both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sinks.stores import POSITION, Tables

Part = tuple[str, int]
EXAMPLES = 5  # how many offending keys a verdict names


def offset_bounds(positions: pa.Table, parts: list[Part]) -> tuple[dict[Part, int], dict[Part, int]]:
    """(first offset, end offset) per partition in `positions`; an absent one is empty at 0."""
    lows, ends = {p: 0 for p in parts}, {p: 0 for p in parts}
    for row in positions.group_by(["topic", "partition"]).aggregate(
            [("offset", "min"), ("offset", "max")]).to_pylist():
        part = (row["topic"], row["partition"])
        if part in ends:
            lows[part], ends[part] = row["offset_min"], row["offset_max"] + 1
    return lows, ends


# ----------------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    """How one partition's offsets in [start, end) are accounted for."""

    part: Part
    start: int
    end: int
    missing: int = 0
    first_missing: list[int] = field(default_factory=list)
    before_start: int = 0
    in_flight: int = 0  # beyond the committed end: redone identically on resume

    @property
    def ok(self) -> bool:
        return not self.missing and not self.before_start


def coverage(positions: pa.Table, ranges: dict[Part, tuple[int, int]],
             pending: dict[Part, list[int]] | None = None) -> list[Coverage]:
    """Whether every offset in each partition's range is in `positions` (or pending)."""
    found = []
    for part, (start, end) in sorted(ranges.items()):
        mask = pc.and_(pc.equal(positions.column("topic"), part[0]),
                       pc.equal(positions.column("partition"), part[1]))
        offsets = positions.filter(mask).column("offset").combine_chunks()
        if pending and part in pending:
            offsets = pa.concat_arrays([offsets, pa.array(pending[part], pa.int64())])
        offsets = pc.unique(offsets)
        inside = offsets.filter(pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, end)))
        report = Coverage(part, start, end, missing=end - start - len(inside),
                          before_start=pc.sum(pc.less(offsets, start)).as_py() or 0,
                          in_flight=pc.sum(pc.greater_equal(offsets, end)).as_py() or 0)
        if report.missing:
            report.first_missing = _missing(start, end, inside, EXAMPLES)
        found.append(report)
    return found


def missing_offsets(positions: pa.Table, part: Part, start: int, end: int) -> list[int]:
    """Every offset in [start, end) of one partition that `positions` lacks, ascending."""
    mask = pc.and_(pc.equal(positions.column("topic"), part[0]),
                   pc.equal(positions.column("partition"), part[1]))
    return _missing(start, end, pc.unique(positions.filter(mask).column("offset").combine_chunks()))


def _missing(start: int, end: int, inside: pa.Array, limit: int | None = None,
             step: int = 1 << 20) -> list[int]:
    missing: list[int] = []
    for low in range(start, end, step):
        window = pa.array(range(low, min(low + step, end)), pa.int64())
        missing += window.filter(pc.invert(pc.is_in(window, value_set=inside))).to_pylist()
        if limit is not None and len(missing) >= limit:
            return missing[:limit]
    return missing


def not_records(missing: list[int], committed: set[int], uncommitted: set[int]
                ) -> tuple[list[int], list[int]]:
    """Of the offsets the archive lacks, those a broker proves hold no committed record:
    (transaction markers or compacted away: no consumer is given anything there,
    aborted: only read_uncommitted consumers are). Any offset a read_committed
    consumer is given is a record, so it stays missing, whatever else is said of it."""
    markers = [o for o in missing if o not in committed and o not in uncommitted]
    aborted = [o for o in missing if o not in committed and o in uncommitted]
    return markers, aborted


def unknown_partitions(positions: pa.Table, ranges: dict[Part, tuple[int, int]]) -> list[str]:
    seen = positions.select(["topic", "partition"]).group_by(["topic", "partition"]).aggregate([])
    return sorted(f"{t}:{p}" for t, p in zip(seen.column("topic").to_pylist(),
                                              seen.column("partition").to_pylist())
                  if (t, p) not in ranges)


def duplicates(table: pa.Table, keys: list[str]) -> tuple[int, list]:
    """Rows beyond the first per key, and a few of the keys."""
    counts = table.group_by(keys).aggregate([([], "count_all")])
    extra = counts.filter(pc.greater(counts.column("count_all"), 1))
    total = pc.sum(pc.subtract(extra.column("count_all"), 1)).as_py() or 0
    examples = sorted(tuple(row[k] for k in keys) for row in extra.slice(0, EXAMPLES).to_pylist())
    return total, examples


# ----------------------------------------------------------------------------- links


def orphan_fates(tables: Tables) -> tuple[int, list]:
    """Fates naming a decision the store does not hold."""
    ids = tables.fates.column("decision_id")
    known = pc.is_in(ids, value_set=pc.unique(tables.decisions.column("decision_id")))
    orphans = tables.fates.filter(pc.and_(pc.is_valid(ids), pc.invert(known)))
    return orphans.num_rows, _positions(orphans)


def unfated_members(tables: Tables) -> tuple[int, list]:
    """Decision members whose position has no fate pointing at a decision that lists it.

    A record may be a member of decisions of two relations (a processor item in its
    payment's match and in its batch's settlement), but its one fate points at its
    decision in its primary relation only. So a member of decision D at position P is
    accounted for when the fate at P points at some decision F that lists P among its
    members; F is D itself for a record of one relation, as in a config without relations.
    Joins only, no Python object per row: it runs over tens of millions of members."""
    members = tables.members.select(["decision_id"] + POSITION)
    fates = tables.fates.select(POSITION + ["decision_id"])
    # positions whose fate's decision lists them (a join never matches a null decision_id,
    # so a heartbeat's fate counts for nothing); a duplicate fate row counts once
    accounted = fates.join(members, keys=POSITION + ["decision_id"], join_type="inner").select(
        POSITION).group_by(POSITION).aggregate([])
    lost = members.join(accounted, keys=POSITION, join_type="left anti")
    # counted per membership, named once per position (two decisions may list one record)
    return lost.num_rows, _positions(lost.select(POSITION).group_by(POSITION).aggregate([]))


def _positions(table: pa.Table) -> list[str]:
    rows = table.sort_by([(k, "ascending") for k in POSITION]).slice(0, EXAMPLES).to_pylist()
    return [f"{r['topic']}:{r['partition']}:{r['offset']}" for r in rows]


def outcome_counts(tables: Tables) -> Counter:
    return Counter(tables.fates.column("outcome").to_pylist())


def decision_counts(tables: Tables) -> Counter:
    labels = Counter()
    for kind, tier, exception in zip(*(tables.decisions.column(c).to_pylist()
                                       for c in ("kind", "tier", "exception_kind"))):
        labels[f"match tier {tier}" if kind == "match" else exception] += 1
    return labels


# ----------------------------------------------------------------------------- agreement


def disagreement(a: pa.Table, b: pa.Table, keys: list[str]) -> tuple[int, list]:
    """Distinct rows in one table and not the other, and a few of their keys."""
    a, b = _distinct(a), _distinct(b)
    only_a = a.join(b, keys=a.column_names, join_type="left anti")
    only_b = b.join(a, keys=b.column_names, join_type="left anti")
    examples = sorted({tuple(r[k] for k in keys) for r in only_a.slice(0, EXAMPLES).to_pylist()}
                      | {tuple(r[k] for k in keys) for r in only_b.slice(0, EXAMPLES).to_pylist()})
    return only_a.num_rows + only_b.num_rows, examples[:EXAMPLES]


def _distinct(table: pa.Table) -> pa.Table:
    """Distinct rows, nulls replaced by a sentinel (a join never matches null keys)."""
    columns = []
    for column in table.columns:
        sentinel = ("\x00null" if pa.types.is_string(column.type)
                    else -(2 ** (column.type.bit_width - 1)))
        columns.append(pc.fill_null(column, pa.scalar(sentinel, column.type)))
    table = pa.table(columns, names=table.column_names)
    return table.group_by(table.column_names).aggregate([])
