"""`tally audit`: prove conservation for a namespace, in PostgreSQL and in Parquet.

What must hold, per source partition, over the offsets the namespace consumed
([its first offset, the committed next offset)):

* the raw archive holds each offset exactly once (consumption was contiguous),
  except offsets the broker proves hold no committed record: transaction
  markers, records of aborted transactions, records removed by compaction;
* each offset has exactly one fate, or is pending in the committed engine state;
* each fate's decision exists, and each decision's members have fates pointing
  at a decision that lists them (itself, or for a record in two relations, its
  decision in its primary relation);
* and PostgreSQL and Parquet hold the same fates and decisions.

The first offsets come from the namespace's recovery/shape.json, the committed
offsets and pending records from its recovery store. Fates beyond the committed
offsets are "in flight": written by an epoch a crash interrupted, and written
again, identically, when the flow resumes. Audit a stopped namespace for a
verdict about a settled state.

Offsets the archive lacks are put to the broker, only then: what a
read_committed and a read_uncommitted consumer are given there. An offset
either is given is a record, so it stays missing; one neither is given is a
transaction marker or was compacted away; one only read_uncommitted is given
belongs to an aborted transaction. Offsets the broker no longer holds
(retention) cannot be proven anything, and stay missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flows import logs
from flows.logs import UserError, printable
from flows.progress import table
from state.contract import Part

STORES = ("postgres", "parquet")


@dataclass
class StoreReport:
    where: str
    fates: int
    decisions: int
    gaps: list = field(default_factory=list)  # [partition, missing, first missing offsets]
    before_start: int = 0
    in_flight: int = 0
    unknown_partitions: list = field(default_factory=list)
    duplicate_fates: tuple = (0, [])
    duplicate_decisions: tuple = (0, [])
    orphan_fates: tuple = (0, [])
    unfated_members: tuple = (0, [])
    outcomes: dict = field(default_factory=dict)
    decision_kinds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.gaps or self.before_start or self.unknown_partitions
                    or self.duplicate_fates[0] or self.duplicate_decisions[0]
                    or self.orphan_fates[0] or self.unfated_members[0])


@dataclass
class AuditReport:
    namespace: str
    partitions: int
    committed_epoch: int | None
    consumed: int
    pending: int | None  # None: no recovery store, so pending records are unknown
    notes: list = field(default_factory=list)
    archive_gaps: list = field(default_factory=list)
    # [partition, markers or compacted, aborted, first of those, first of these]
    not_records: list = field(default_factory=list)
    archive_duplicates: tuple = (0, [])
    lost: list = field(default_factory=list)  # given up by --skip-lost-offsets (flows/runtime/lost_offsets.py)
    stores: list = field(default_factory=list)
    disagreement: dict = field(default_factory=dict)  # table -> (rows, examples)

    @property
    def ok(self) -> bool:
        return (self.pending is not None and not self.archive_gaps and not self.lost
                and not self.archive_duplicates[0] and all(s.ok for s in self.stores)
                and not any(n for n, _ in self.disagreement.values()))


# ----------------------------------------------------------------------------- the audit


def audit(data_root: Path, namespace: str, stores: list[str], pg_dsn: str | None,
          brokers=None) -> AuditReport:
    """`brokers`: a callable giving the broker's address (raising UserError when there is
    none), called only when the archive lacks offsets."""
    from sinks import audit as checks
    from sinks.stores import Archive, ParquetStore, PostgresStore

    archive = Archive(data_root).positions()
    starts, ends, committed, notes = _ranges(data_root, archive)
    ranges = {part: (starts[part], ends[part]) for part in starts}
    skipped = _not_records(checks, archive, checks.coverage(archive, ranges), brokers, notes)
    pending = _pending(committed)
    report = AuditReport(namespace, len(ranges), committed and committed.epoch,
                         sum(e - s for s, e in ranges.values()),
                         None if pending is None else sum(len(v) for v in pending.values()), notes)
    if pending is None:
        notes.append("no committed recovery snapshot: pending records cannot be told from lost ones")
    report.not_records = [[f"{t}:{p}", len(markers), len(aborted), markers[:5], aborted[:5]]
                          for (t, p), (markers, aborted) in sorted(skipped.items())]
    absent = {part: markers + aborted for part, (markers, aborted) in skipped.items()}
    report.archive_gaps = _gaps(checks.coverage(archive, ranges, absent))
    report.archive_duplicates = checks.duplicates(archive, checks.POSITION)
    from flows.runtime import lost_offsets
    report.lost = lost_offsets.recorded(data_root)
    loaded = []
    for store in stores:
        logs.info("reading the store", store=store, namespace=namespace)
        if store == "postgres":
            with PostgresStore(pg_dsn, namespace) as reader:
                tables = reader.compact()
        else:
            tables = ParquetStore(data_root.parent, data_root.name).compact()
        loaded.append(tables)
        report.stores.append(_check_store(checks, tables, ranges, _merged(pending or {}, absent)))
    if len(loaded) == 2:
        a, b = loaded
        report.disagreement = {
            "fates": checks.disagreement(a.fates, b.fates, checks.POSITION),
            "decisions": checks.disagreement(a.decisions, b.decisions, ["decision_id"])}
    return report


def _ranges(data_root: Path, archive):
    """First offsets (shape.json), committed next offsets (recovery store) per partition."""
    from flows.runtime.recovery_store import read_committed
    from sinks.audit import offset_bounds

    shape_file = data_root / "recovery" / "shape.json"
    if not shape_file.exists():
        raise UserError(f"{data_root} holds no Tally namespace (no recovery/shape.json); "
                        f"check --namespace and --data-dir")
    shape = json.loads(shape_file.read_text())
    parts = [_part(p) for p in shape["partitions"]]
    notes = []
    archived_starts, archived_ends = offset_bounds(archive, parts)
    starts = {_part(k): v for k, v in shape.get("starts", {}).items()}
    if not starts:
        notes.append("shape.json predates recorded first offsets: the archive's lowest is used")
        starts = archived_starts
    committed = read_committed(data_root / "recovery")
    if committed is not None:
        ends = {p: committed.next_offsets.get(p, starts[p]) for p in parts}
        ends = {p: max(v, starts[p]) if v >= 0 else starts[p] for p, v in ends.items()}
    else:
        ends = archived_ends
    return starts, ends, committed, notes


def _not_records(checks, archive, covered, brokers, notes: list) -> dict:
    """Per partition, the offsets the archive lacks that the broker proves hold no
    committed record: (markers or compacted, aborted). Never raises: what cannot be
    checked stays missing, with a note saying why."""
    from flows.kafka import kafka_io

    lacking = {c.part: checks.missing_offsets(archive, c.part, c.start, c.end)
               for c in covered if c.missing}
    if not lacking:
        return {}
    try:
        if brokers is None:
            raise UserError("no broker given")
        address = brokers()
        lows = kafka_io.low_offsets(address, sorted(lacking))
        found = {}
        for part, missing in sorted(lacking.items()):
            held = [o for o in missing if o >= lows[part]]
            if len(held) < len(missing):
                notes.append(f"{part[0]}:{part[1]}: {len(missing) - len(held):,} offsets missing "
                             f"from the archive are before the broker's first offset {lows[part]}, "
                             f"so nothing can prove they were not records")
            if held:
                span = (part, held[0], held[-1] + 1)
                found[part] = checks.not_records(
                    held, kafka_io.delivered_offsets(address, *span, "read_committed"),
                    kafka_io.delivered_offsets(address, *span, "read_uncommitted"))
        return found
    except UserError as exc:
        notes.append(f"offsets missing from the archive were not checked against the broker: {exc}")
        return {}


def _merged(pending: dict, absent: dict) -> dict:
    return {part: pending.get(part, []) + absent.get(part, []) for part in pending.keys() | absent}


def _pending(committed) -> dict | None:
    if committed is None:
        return None
    by_part: dict = {}
    for fate in committed.pending():
        by_part.setdefault((fate.topic, fate.partition), []).append(fate.offset)
    return by_part


def _check_store(checks, tables, ranges, pending) -> StoreReport:
    covered = checks.coverage(tables.fates, ranges, pending)
    return StoreReport(
        where=tables.where, fates=tables.fates.num_rows, decisions=tables.decisions.num_rows,
        gaps=_gaps(covered), before_start=sum(c.before_start for c in covered),
        in_flight=sum(c.in_flight for c in covered),
        unknown_partitions=checks.unknown_partitions(tables.fates, ranges),
        duplicate_fates=checks.duplicates(tables.fates, checks.POSITION),
        duplicate_decisions=checks.duplicates(tables.decisions, ["decision_id"]),
        orphan_fates=checks.orphan_fates(tables), unfated_members=checks.unfated_members(tables),
        outcomes=dict(sorted(checks.outcome_counts(tables).items())),
        decision_kinds=dict(sorted(checks.decision_counts(tables).items())))


def _gaps(covered) -> list:
    return [[f"{c.part[0]}:{c.part[1]}", c.missing, c.first_missing] for c in covered if c.missing]


def _part(text: str) -> Part:
    topic, partition = text.rsplit(":", 1)
    return topic, int(partition)


# ----------------------------------------------------------------------------- printing


def render(report: AuditReport) -> str:
    rows = overview_rows(report)
    for store in report.stores:
        rows += store_rows(store)
    rows += agreement_rows(report)
    rows = [(label, printable(value) if isinstance(value, str) else value)  # examples come from records
            for label, value in rows]
    verdict = "CONSERVED" if report.ok else "NOT CONSERVED"
    return table(rows, f"Audit of namespace {report.namespace}") + f"\nverdict: {verdict}"


def overview_rows(report: AuditReport) -> list:
    """The namespace-wide lines: what was consumed and whether the archive holds it once."""
    return [("source partitions", report.partitions),
            ("committed epoch", "none" if report.committed_epoch is None else report.committed_epoch),
            ("offsets consumed", report.consumed),
            ("pending in the snapshot", "unknown" if report.pending is None else report.pending),
            ("not records (transaction markers or compacted)",
             _not_record_text(report.not_records, 1)),
            ("not records (aborted transactions)", _not_record_text(report.not_records, 2)),
            ("archive: each offset once", _yes(not report.archive_gaps
                                               and not report.archive_duplicates[0],
                                               _gap_text(report.archive_gaps)
                                               + _count_text("duplicated", report.archive_duplicates))),
            ("nothing given up (--skip-lost-offsets)", _yes(not report.lost, _lost_text(report.lost)))]


def _lost_text(lost: list) -> str:
    return "; ".join(f"{e['partition']} offsets {e['lost_from']:,} to {e['lost_to']:,} "
                     f"({e['why']}, given up {e['at']})" for e in lost[:5])


def agreement_rows(report: AuditReport) -> list:
    """Whether the stores agree, and the notes."""
    rows = [(f"stores agree on {name}", _yes(not count, f"{count:,} rows differ, e.g. {examples}"))
            for name, (count, examples) in report.disagreement.items()]
    return rows + [("note", n) for n in report.notes]


def store_rows(store: StoreReport) -> list:
    rows = [(store.where, ""), ("  fates", store.fates), ("  decisions", store.decisions),
            ("  every offset one fate", _yes(not store.gaps and not store.duplicate_fates[0]
                                             and not store.before_start,
                                             _gap_text(store.gaps)
                                             + _count_text("duplicated", store.duplicate_fates)
                                             + _count_text("before the first offset",
                                                           (store.before_start, [])))),
            ("  decisions once", _yes(not store.duplicate_decisions[0],
                                      _count_text("duplicated", store.duplicate_decisions))),
            ("  every fate's decision exists", _yes(not store.orphan_fates[0],
                                                    _count_text("orphaned", store.orphan_fates))),
            # a decision listing it: the member's own, or its primary relation's
            ("  every member fated to a decision listing it",
             _yes(not store.unfated_members[0], _count_text("without", store.unfated_members)))]
    if store.unknown_partitions:
        rows.append(("  fates of other partitions", ", ".join(store.unknown_partitions)))
    if store.in_flight:
        rows.append(("  in flight (redone on resume)", store.in_flight))
    rows += [(f"  fates: {name}", count) for name, count in store.outcomes.items()]
    rows += [(f"  decisions: {name}", count) for name, count in store.decision_kinds.items()]
    return rows


def _not_record_text(not_records: list, column: int) -> str | int:
    count = sum(row[column] for row in not_records)
    if not count:
        return 0
    examples = "; ".join(f"{row[0]} first {row[column + 2]}"
                         for row in [r for r in not_records if r[column]][:3])
    return f"{count:,}, proven on the broker, e.g. {examples}"


def _yes(ok: bool, why: str) -> str:
    return "yes" if ok else f"NO: {why.strip('; ')}"


def _gap_text(gaps: list, shown: int = 3) -> str:
    text = "".join(f"{part}: {missing:,} missing, first {first}; "
                   for part, missing, first in gaps[:shown])
    return text + (f"and {len(gaps) - shown} more partitions; " if len(gaps) > shown else "")


def _count_text(what: str, counted: tuple) -> str:
    count, examples = counted
    return f"{count:,} {what}{', e.g. ' + str(examples) if examples else ''}; " if count else ""
