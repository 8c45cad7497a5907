"""A batch of decisions and fates as Arrow columns, built once for both stores.

The Parquet sink writes `decisions` and `fates` as they are; the PostgreSQL sink
writes the same arrays, with `candidates_json` in place of the candidates column
(jsonb there, a list of structs in Parquet).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import msgspec
import pyarrow as pa

from sinks.parquet import decisions_table, fates_table
from state.decision import Decision, Fate

JSON = pa.json_(pa.string())  # the arrow.json type, which ADBC writes as jsonb


@dataclass(frozen=True)
class Columns:
    decisions: pa.Table  # sinks.parquet.DECISIONS_SCHEMA
    fates: pa.Table  # sinks.parquet.FATES_SCHEMA
    candidates_json: pa.ChunkedArray  # per decision, its candidates as JSON

    @property
    def rows(self) -> int:
        return self.decisions.num_rows + self.fates.num_rows


def columns(decisions: list[Decision], fates: list[Fate]) -> Columns:
    return Columns(decisions_table(decisions), fates_table(fates),
                   pa.chunked_array([candidates_json(decisions)], JSON))


def candidates_json(decisions: list[Decision]) -> pa.Array:
    # the same JSON as msgspec gives each Candidate; most decisions have none
    encode = msgspec.json.encode
    texts = [encode(c).decode() if c else "[]" for c in map(attrgetter("candidates"), decisions)]
    return pa.array(texts, JSON)


def concat(batches: list[Columns]) -> Columns:
    """One batch of several (at least one)."""
    if len(batches) == 1:
        return batches[0]
    return Columns(pa.concat_tables([b.decisions for b in batches]),
                   pa.concat_tables([b.fates for b in batches]),
                   pa.chunked_array([c for b in batches for c in b.candidates_json.chunks], JSON))
