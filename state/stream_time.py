"""A partition's event-time progress, and the record too far ahead to move it.

Progress is the highest event time a partition has shown; it judges lateness and,
as the lowest over all partitions, makes the watermark. One record with a clock
hours ahead (or in 2099) would lift it at once and make every later record of the
partition late. So a record more than `max_clock_skew` ahead of its partition's
progress moves nothing until the partition's next timed record speaks for it:

- the next record is within `max_clock_skew` of it: the jump was real (a source back
  after a quiet night); the held record is taken as it would have been, and the
  progress moves to it;
- the next record is further behind: the held record is the odd one out. It becomes
  a `clock_skew` exception of its own and the progress stays where it was.

Everything is judged from the partition's own log order, never from the wall clock
or from other partitions (whose reading speed varies from run to run), so every run
of the same offsets judges the same way. Heartbeats are a writer's promise and are
never held (Tally's own follow the wall clock, which jumps after a quiet night), but
they do speak for a held record. Invalid records carry no time and speak for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from state.contract import NEVER, Event

TAKE, SKEWED = "take", "skewed"


class Clock:
    """One partition's progress as one shard knows it; `held` is set only in the shard
    that owns the held record (every shard holds its time, so all agree on progress)."""

    __slots__ = ("high", "ahead", "held")

    def __init__(self, high: int = NEVER, ahead: int | None = None, held: Event | None = None):
        self.high, self.ahead, self.held = high, ahead, held


def walk(clock: Clock, piece, skew_us: int) -> Iterator[tuple[str, object, int, int]]:
    """Advance `clock` over one chunk of its partition (a state.routing.Slice: the times
    of every record in the chunk, NEVER for an invalid one, and this shard's own
    records). Yields (TAKE, record, progress before it, 0) for each record to take,
    and (SKEWED, record, progress, next time) for a held one its partition did not
    follow."""
    if clock.ahead is None and max(piece.jumps, default=NEVER) <= clock.high + skew_us:
        # nothing is held and nothing can be: the chunk's progress as it was read
        high = clock.high
        for record, before in zip(piece.records, piece.befores):
            yield TAKE, record, (high if high > before else before), 0
        if piece.high > high:
            clock.high = piece.high
        return
    yield from _walk(clock, piece.times, piece.beats, piece.positions, piece.records, skew_us)


def _walk(clock: Clock, times: list[int], beats: list[int], positions: list[int], records: list,
          skew_us: int) -> Iterator[tuple[str, object, int, int]]:
    own = dict(zip(positions, records))
    beat = set(beats)
    for position, time_us in enumerate(times):
        record = own.get(position)
        if time_us == NEVER:
            if record is not None:
                yield TAKE, record, clock.high, 0
            continue
        if clock.ahead is not None:
            yield from settle(clock, time_us, skew_us)
        if position not in beat and time_us > clock.high + skew_us:
            clock.ahead, clock.held = time_us, record
            continue
        if record is not None:
            yield TAKE, record, clock.high, 0
        if time_us > clock.high:
            clock.high = time_us


def settle(clock: Clock, next_us: int | None, skew_us: int) -> Iterator[tuple[str, object, int, int]]:
    """Judge the held record by the partition's next time (None: the end of input,
    which contradicts nothing)."""
    ahead, held = clock.ahead, clock.held
    clock.ahead = clock.held = None
    if next_us is None or next_us >= ahead - skew_us:
        if held is not None:
            yield TAKE, held, clock.high, 0
        clock.high = max(clock.high, ahead)
    elif held is not None:
        yield SKEWED, held, clock.high, next_us
